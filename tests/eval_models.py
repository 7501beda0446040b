"""Helpers for the evaluation tests: tiny random Whisper directories that decode (real vocabulary,
tokenizer, generation config) and manifests of short synthetic clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_config

# The multilingual vocabulary's special ids (WhisperConfig's defaults are the English-only ones),
# and a short decoder context: random models never stop early, so they decode context // 2 tokens.
TINY_DECODER = dict(
    decoder_start_token_id=50258, pad_token_id=50257, bos_token_id=50257, eos_token_id=50257, max_target_positions=24
)


def write_tiny_whisper(
    directory: Path, seed: int, encoder_from: Path | None = None, decoder_noise: float = 0.0
) -> Path:
    """A tiny random multilingual Whisper as a complete HF directory.

    With `encoder_from`, the encoder is copied bit for bit from that directory (a frozen-encoder
    expert) and the decoder is the source's plus Gaussian noise of scale `decoder_noise`."""
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.builtin import builtin_files
    from speechmerge.checkpoints.processor import DecodingFacts, write_model_files
    from speechmerge.checkpoints.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    if encoder_from is None:
        model = WhisperForConditionalGeneration(tiny_config(**TINY_DECODER)).eval()
    else:
        model = WhisperForConditionalGeneration.from_pretrained(encoder_from).eval()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if not name.startswith("model.encoder."):
                    parameter.add_(decoder_noise * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(directory)
    write_model_files(directory, model.config, load_tokenizer(builtin_files("whisper-base").folder), DecodingFacts())
    return directory


def write_clips(
    folder: Path, count: int, language: str = "es", task: str = "transcribe", seed: int = 0, name: str = "clips.jsonl"
) -> Path:
    """A manifest of `count` short synthetic clips (tones in noise, 0.6-1.4 s) with text."""
    from speechmerge.data.audio import write_wav
    from speechmerge.data.manifest import Utterance, write_manifest

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    utterances = []
    for index in range(count):
        seconds = 0.6 + 0.2 * index % 0.8
        t = np.arange(int(16000 * seconds)) / 16000
        samples = 0.3 * np.sin(2 * np.pi * (200 + 50 * index) * t) + 0.05 * rng.standard_normal(t.size)
        audio = folder / f"{language}-{seed}-{index}.wav"
        write_wav(audio, samples.astype(np.float32))
        utterances.append(
            Utterance(
                id=f"{language}-{index}",
                audio=audio.resolve(),
                text=f"hola número {index}",
                translation=f"hello number {index}",
                language=language,
                task=task,
                domain="synthetic",
                split="test",
            )
        )
    manifest = folder / name
    write_manifest(manifest, utterances)
    return manifest


def write_spanish_sets(root: Path, transcribe: int, translate: int, seed: int) -> dict[str, Path]:
    """A Spanish transcription manifest and a Spanish->English translation manifest of synthetic clips."""
    return {
        "transcribe": write_clips(root, transcribe, "es", "transcribe", seed=seed, name="es.jsonl"),
        "translate": write_clips(root, translate, "es", "translate", seed=seed + 1, name="es.translate.jsonl"),
    }
