"""Which utterances an expert's statistics are gathered on, and the hash that names them."""

from __future__ import annotations

import hashlib
import random
from typing import Optional

from speechmerge.data.manifest import Utterance
from speechmerge.errors import SpeechmergeError


def sample_utterances(utterances: list[Utterance], count: Optional[int], seed: int) -> list[Utterance]:
    """`count` utterances drawn without replacement by a generator seeded with `seed`, in id order
    (all of them, in id order, when `count` is None or at least their number)."""
    ordered = sorted(utterances, key=lambda u: u.id)
    if not ordered:
        raise SpeechmergeError("statistics: no utterances to gather statistics on; give a manifest with utterances")
    if count is not None and count < 1:
        raise SpeechmergeError(f"statistics: utterances: {count}; give a positive number or leave it out for all")
    if count is None or count >= len(ordered):
        return ordered
    chosen = random.Random(seed).sample(range(len(ordered)), count)
    return [ordered[index] for index in sorted(chosen)]


def data_hash(utterances: list[Utterance]) -> str:
    """SHA-256 over each utterance's audio bytes, reference, language and task, in order."""
    from speechmerge.features.encoder_cache import clip_key

    digest = hashlib.sha256()
    for utterance in utterances:
        fields = (clip_key(utterance.audio), utterance.reference, utterance.language, utterance.task)
        digest.update(("\x1f".join(fields) + "\x1e").encode())
    return digest.hexdigest()
