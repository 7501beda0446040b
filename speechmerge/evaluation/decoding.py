"""Batched decoding of utterances by one model, through the prediction cache.

Clips are grouped by (task, language) — one prompt per batch, as Whisper decodes best —
sorted by duration within a group (similar lengths finish together, so fewer padded steps),
and decoded `batch_size` at a time. Only clips missing from the prediction cache are decoded;
the backend (model loading) is created only if there is one.

With `encoder_window="audio"` the decoder cross-attends only to the first encoder positions of
each batch: those of its longest clip's audio (read from the file, 50 positions a second) plus
a margin, never fewer than a clip's audio holds; the rest of Whisper's 30 s window is padding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Optional

from speechmerge.data.manifest import Utterance
from speechmerge.evaluation.backend import Backend, DecodeSettings, make_backend, max_new_tokens
from speechmerge.evaluation.model import EvalModel
from speechmerge.evaluation.options import AUDIO_WINDOW_MARGIN_SECONDS, ENCODER_POSITIONS_PER_SECOND, DecodeOptions
from speechmerge.evaluation.prediction_cache import CachedDecode, PredictionCache, entry_key
from speechmerge.progress import progress_bar


@dataclass
class DecodeStats:
    """Where predictions came from and what decoding cost."""

    decoded: int = 0
    from_cache: int = 0
    load_seconds: float = 0.0
    decode_seconds: float = 0.0
    encoder_batches: int = 0

    @property
    def seconds_per_clip(self) -> float:
        return self.decode_seconds / self.decoded if self.decoded else float("nan")


def plan_batches(utterances: Sequence[Utterance], indices: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by (task, language), by duration within a group, cut into batches."""

    def order(i: int):
        u = utterances[i]
        return (u.task, u.language, u.duration or 0.0, u.id)

    batches = []
    for _, group in groupby(sorted(indices, key=order), key=lambda i: (utterances[i].task, utterances[i].language)):
        members = list(group)
        batches += [members[start : start + batch_size] for start in range(0, len(members), batch_size)]
    return batches


def audio_window(audio: Sequence[Path], positions: int, margin: float = AUDIO_WINDOW_MARGIN_SECONDS) -> int:
    """Encoder positions covering the longest clip's audio plus `margin` seconds, at most `positions`."""
    from speechmerge.data.audio import audio_duration

    seconds = max(audio_duration(path) for path in audio) + margin
    return min(positions, math.ceil(seconds * ENCODER_POSITIONS_PER_SECOND))


def decode_utterances(
    model: EvalModel,
    utterances: Sequence[Utterance],
    options: DecodeOptions,
    use_cache: bool = True,
    progress: bool = False,
    backend_factory: Callable[..., Backend] = make_backend,
) -> tuple[list[CachedDecode], DecodeStats]:
    """One `CachedDecode` per utterance, in order, and how it was obtained.

    Cached predictions are read only with `use_cache`; new ones are always stored (so
    `use_cache=False` refreshes the cache)."""
    import torch

    from speechmerge.features.encoder_cache import clip_key

    stats = DecodeStats()
    cache = PredictionCache(model.key, options.prediction_key())
    keys = [
        entry_key(clip_key(u.audio), u.language if options.language == "manifest" else None, u.task) for u in utterances
    ]
    results: list[Optional[CachedDecode]] = [cache.get(key) if use_cache else None for key in keys]
    if options.detects_language and model.multilingual:  # an entry decoded without identification lacks it
        results = [r if r is not None and r.detected_language is not None else None for r in results]
    todo = [i for i, result in enumerate(results) if result is None]
    stats.from_cache = len(utterances) - len(todo)
    if not todo:
        return results, stats
    start = time.perf_counter()
    threads = options.threads or torch.get_num_threads()
    backend = backend_factory(
        model, options.backend, options.weights, threads, options.encoder_cache, cross_attention=options.cross_attention
    )
    stats.load_seconds = time.perf_counter() - start
    settings = DecodeSettings(beam_size=options.beam_size, max_new_tokens=max_new_tokens(model, options.max_new_tokens))
    start = time.perf_counter()
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(f"decoding {model.label} ({options.describe()})", total=len(todo))
        for batch in plan_batches(utterances, todo, options.batch_size):
            members = [utterances[i] for i in batch]
            encoded = backend.encode([u.audio for u in members])
            if options.encoder_window == "audio":
                encoded = encoded[:, : audio_window([u.audio for u in members], encoded.shape[1])]
            detected = (
                backend.detect_languages(encoded)
                if model.multilingual and options.detects_language
                else [None] * len(members)
            )
            languages = [u.language for u in members] if options.language == "manifest" else detected
            texts = backend.decode(encoded, languages, members[0].task, settings)
            for index, text, language, found in zip(batch, texts, languages, detected):
                results[index] = CachedDecode(text=text, language=language or "en", detected_language=found)
                cache.put(keys[index], results[index])
            bar.advance(task, len(batch))
    stats.decode_seconds = time.perf_counter() - start
    stats.decoded = len(todo)
    stats.encoder_batches = backend.encoder_calls
    return results, stats
