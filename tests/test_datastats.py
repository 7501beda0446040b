"""Expert statistics (Gram matrices, empirical Fisher) of a tiny Whisper against a direct computation.

The reference runs the decoder from its definition (pre-norm Transformer layers: self-attention with
a causal mask, cross-attention over the encoder output, a GELU MLP; Radford et al. 2022, Fig. 1),
one utterance at a time, with the model's own weights, and collects each linear layer's inputs; the
Fisher is recomputed by per-utterance autograd of the reference tokens' log-likelihood, the encoder
run afresh on log-mel features."""

from __future__ import annotations

import math

import pytest
import torch
from eval_models import write_clips, write_tiny_whisper

from speechmerge.data.manifest import read_manifest
from speechmerge.datastats import StatisticsSettings, expert_statistics
from speechmerge.errors import SpeechmergeError

TEXTS = ("hola", "hola número uno dos tres", "buenos días")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("datastats")
    base = write_tiny_whisper(root / "base", seed=0)
    expert = write_tiny_whisper(root / "expert", seed=1, encoder_from=base, decoder_noise=0.05)
    clips = read_manifest(write_clips(root / "clips", 3))
    utterances = [u.model_copy(update={"text": text}) for u, text in zip(clips, TEXTS)]  # unequal lengths: padding
    return base, expert, utterances


def _reference_sequence(tokenizer, utterance):
    """Whisper's training sequence: prompt + ' ' + reference; labels the next tokens, the prompt's masked."""
    special = tokenizer.convert_tokens_to_ids
    prompt = [special(t) for t in ("<|startoftranscript|>", f"<|{utterance.language}|>", "<|transcribe|>")]
    prompt.append(special("<|notimestamps|>"))
    text = tokenizer.encode(" " + utterance.text, add_special_tokens=False)
    inputs = prompt + text
    labels = [-100] * 3 + text + [special("<|endoftext|>")]
    return torch.tensor([inputs]), torch.tensor([labels])


def _attention(module, x, memory, causal: bool, heads: int, record, prefix: str):
    """Multi-head attention from its definition; records the inputs of q/k/v/out."""
    record(f"{prefix}.q_proj", x)
    record(f"{prefix}.k_proj", memory)
    record(f"{prefix}.v_proj", memory)
    q, k, v = module.q_proj(x), module.k_proj(memory), module.v_proj(memory)
    d = q.shape[-1] // heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)
    if causal:
        length = x.shape[1]
        scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    context = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
    record(f"{prefix}.out_proj", context)
    return module.out_proj(context)


def _reference_grams(model, encoder_outputs, sequences):
    """Σ over utterances of XᵀX of every decoder linear layer's input rows, and the row counts."""
    config = model.config
    assert not config.scale_embedding
    grams, rows = {}, {}

    def record(name, x):
        flat = x.reshape(-1, x.shape[-1]).double()
        grams[f"{name}.weight"] = grams.get(f"{name}.weight", 0) + flat.T @ flat
        rows[f"{name}.weight"] = rows.get(f"{name}.weight", 0) + flat.shape[0]

    decoder = model.model.decoder
    with torch.no_grad():
        for memory, (inputs, _) in zip(encoder_outputs, sequences):
            memory = memory[None]
            h = decoder.embed_tokens(inputs) + decoder.embed_positions.weight[: inputs.shape[1]]
            for index, layer in enumerate(decoder.layers):
                prefix = f"model.decoder.layers.{index}"
                h = h + _attention(
                    layer.self_attn,
                    layer.self_attn_layer_norm(h),
                    layer.self_attn_layer_norm(h),
                    True,
                    config.decoder_attention_heads,
                    record,
                    f"{prefix}.self_attn",
                )
                h = h + _attention(
                    layer.encoder_attn,
                    layer.encoder_attn_layer_norm(h),
                    memory,
                    False,
                    config.decoder_attention_heads,
                    record,
                    f"{prefix}.encoder_attn",
                )
                x = layer.final_layer_norm(h)
                record(f"{prefix}.fc1", x)
                hidden = torch.nn.functional.gelu(layer.fc1(x))
                record(f"{prefix}.fc2", hidden)
                h = h + layer.fc2(hidden)
    return grams, rows


def _load(directory):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    model = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    return model, WhisperTokenizerFast.from_pretrained(directory), WhisperFeatureExtractor.from_pretrained(directory)


def _features(extractor, utterance):
    from speechmerge.data.audio import load_audio

    return extractor(load_audio(utterance.audio), sampling_rate=16000, return_tensors="pt").input_features


def test_grams_match_the_decoder_run_by_hand_with_padding_excluded(setup):
    base, expert, utterances = setup
    stats = expert_statistics(expert, utterances, StatisticsSettings(statistics=("gram",), batch_size=3), base=base)
    model, tokenizer, extractor = _load(expert)
    with torch.no_grad():
        memories = [model.model.encoder(_features(extractor, u)).last_hidden_state[0] for u in utterances]
    grams, rows = _reference_grams(model, memories, [_reference_sequence(tokenizer, u) for u in utterances])
    assert stats.record.parts == "decoder"
    assert set(stats.record.grams) == set(grams)  # every decoder linear weight; proj_out is the tied embedding
    for name, expected in grams.items():
        gram, count = stats.gram(name)
        assert count == rows[name], name
        torch.testing.assert_close(gram.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # q/k/v read one tensor, and every layer's cross-attention k/v reads the encoder output: one stored Gram each
    entries = stats.record.grams
    assert (
        entries["model.decoder.layers.0.self_attn.k_proj.weight"].tensor
        == entries["model.decoder.layers.0.self_attn.q_proj.weight"].tensor
    )
    assert (
        entries["model.decoder.layers.1.encoder_attn.v_proj.weight"].tensor
        == entries["model.decoder.layers.0.encoder_attn.k_proj.weight"].tensor
    )
    assert entries["model.decoder.layers.0.encoder_attn.k_proj.weight"].rows == 1500 * len(utterances)


def test_gram_passes_bound_memory_and_give_the_same_statistics(setup):
    from speechmerge.datastats.gather import gram_passes

    base, expert, utterances = setup
    whole = expert_statistics(expert, utterances, StatisticsSettings(statistics=("gram",), batch_size=3), base=base)
    # batch_size 2 makes a new cache entry; 5 KiB holds one tiny decoder layer (4 x (4 x 16² + 32²) bytes)
    split = expert_statistics(
        expert, utterances, StatisticsSettings(statistics=("gram",), batch_size=2), base=base, gram_bytes=5 * 1024
    )
    files = {entry.file for entry in split.record.grams.values()}
    assert files == {"grams-0.safetensors", "grams-1.safetensors"}
    assert set(split.record.grams) == set(whole.record.grams)
    for name in whole.record.grams:
        (a, rows_a), (b, rows_b) = whole.gram(name), split.gram(name)
        assert rows_a == rows_b
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(expert)
    assert gram_passes(model, ("model.decoder.",), None) == [("model.decoder.",)]
    assert len(gram_passes(model, ("model.decoder.",), 1)) == 2  # a layer larger than the limit: a pass of its own


def test_empirical_fisher_matches_per_utterance_autograd(setup):
    base, expert, utterances = setup
    stats = expert_statistics(expert, utterances, StatisticsSettings(statistics=("fisher",)), base=base)
    model, tokenizer, extractor = _load(expert)
    names = [name for name, _ in model.named_parameters() if name.startswith("model.decoder.")]
    params = [dict(model.named_parameters())[name] for name in names]
    expected = [torch.zeros_like(p) for p in params]
    for utterance in utterances:
        inputs, labels = _reference_sequence(tokenizer, utterance)
        logits = model(input_features=_features(extractor, utterance), decoder_input_ids=inputs).logits
        scored = labels[0] != -100
        log_likelihood = logits[0].log_softmax(-1)[scored, labels[0][scored]].sum()
        for total, grad in zip(expected, torch.autograd.grad(log_likelihood, params)):
            total += grad.square() / len(utterances)
    assert sorted(names) == stats.record.fishers
    assert stats.record.fisher.startswith("empirical")
    for name, total in zip(names, expected):
        torch.testing.assert_close(stats.fisher(name), total, rtol=1e-3, atol=1e-6 * float(total.abs().max()) + 1e-12)


def test_statistics_come_from_the_cache_on_a_second_call(setup, monkeypatch):
    from transformers import WhisperForConditionalGeneration

    base, expert, utterances = setup
    calls = []
    forward = WhisperForConditionalGeneration.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "forward", counting)
    settings = StatisticsSettings(utterances=2, seed=7)
    first = expert_statistics(expert, utterances, settings, base=base)
    assert len(calls) == 2  # Fisher: one forward per utterance
    again = expert_statistics(expert, list(reversed(utterances)), settings, base=base)
    assert len(calls) == 2 and again.folder == first.folder
    assert len(first.record.utterances) == 2


def test_sampling_is_seeded_and_independent_of_the_input_order(setup):
    from speechmerge.datastats.selection import sample_utterances

    _, _, utterances = setup
    many = [u.model_copy(update={"id": f"u{i:02d}"}) for i in range(20) for u in utterances[:1]]
    chosen = sample_utterances(many, 5, seed=3)
    assert [u.id for u in chosen] == [u.id for u in sample_utterances(list(reversed(many)), 5, seed=3)]
    assert len({u.id for u in chosen}) == 5 and [u.id for u in chosen] == sorted(u.id for u in chosen)
    draws = {tuple(u.id for u in sample_utterances(many, 5, seed=seed)) for seed in range(10)}
    assert len(draws) > 1  # the seed changes the draw (C(20, 5) = 15504 subsets)
    assert sample_utterances(many, 50, seed=0) == sorted(many, key=lambda u: u.id)


def test_an_expert_with_its_own_encoder_gets_encoder_statistics(setup):
    base, expert, utterances = setup
    stats = expert_statistics(base, utterances[:1], StatisticsSettings(statistics=("gram",)))
    assert stats.record.parts == "model"
    gram, rows = stats.gram("model.encoder.layers.0.fc2.weight")
    assert rows == 1500 and gram.shape == (32, 32)  # fc2 reads the tiny encoder's 32 MLP features, every frame
    assert stats.has_gram("model.decoder.layers.1.fc2.weight")


def test_statistics_of_another_model_are_refused_in_one_line(setup):
    from speechmerge.checkpoints.hf import HFCheckpoint

    base, expert, utterances = setup
    stats = expert_statistics(expert, utterances, StatisticsSettings(statistics=("gram",), batch_size=3), base=base)
    stats.check_model(HFCheckpoint(expert).content_hash(), "expert")
    with pytest.raises(SpeechmergeError) as error:
        stats.check_model(HFCheckpoint(base).content_hash(), "base")
    assert (
        "\n" not in str(error.value) and "expert base" in str(error.value) and "gather statistics" in str(error.value)
    )
    with pytest.raises(SpeechmergeError, match="no Fisher for model.decoder.layers.0.fc1.weight"):
        stats.fisher("model.decoder.layers.0.fc1.weight")


def test_bad_selection_is_one_line(setup):
    base, expert, utterances = setup
    with pytest.raises(SpeechmergeError, match="no utterances"):
        expert_statistics(expert, [], base=base)


def test_a_loaded_model_gives_the_statistics_of_its_directory(setup):
    from transformers import WhisperForConditionalGeneration

    base, expert, utterances = setup
    settings = StatisticsSettings(statistics=("gram",), batch_size=3)
    model = WhisperForConditionalGeneration.from_pretrained(expert)
    loaded = expert_statistics(model, utterances, settings, base=base, processor=expert)
    on_disk = expert_statistics(expert, utterances, settings, base=base)
    assert loaded.record.model_hash_of == "tensors" and loaded.folder != on_disk.folder
    name = "model.decoder.layers.1.fc2.weight"
    torch.testing.assert_close(loaded.gram(name)[0], on_disk.gram(name)[0])
    with pytest.raises(SpeechmergeError, match="processor="):
        expert_statistics(model, utterances, settings)


def test_statistics_run_on_the_threads_asked_for_and_restore_torch_s_setting(setup, tmp_path, monkeypatch):
    from speechmerge.datastats import gather

    monkeypatch.setenv("SPEECHMERGE_CACHE", str(tmp_path))
    base, expert, utterances = setup
    seen = []
    real = gather.gather

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(gather, "gather", recording)
    before = torch.get_num_threads()
    expert_statistics(expert, utterances, StatisticsSettings(statistics=("gram",)), base=base, threads=1)
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(SpeechmergeError, match="statistics: threads 0; give at least 1"):
        expert_statistics(expert, utterances, StatisticsSettings(statistics=("fisher",)), base=base, threads=0)
    assert torch.get_num_threads() == before
