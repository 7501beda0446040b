"""MAPSSWE: the matched-pairs sentence-segment word error test of NIST SCTK (`sc_stats -t mapsswe`;
Gillick & Cox 1989; Pallett et al. 1990), written from SCTK's description.

Both systems' alignments against the same reference are cut into segments: within one utterance,
two error events belong to different segments when at least MIN_GOOD = 2 consecutive reference
words that *both* systems got right lie between them. An error event is a reference word either
system substituted or deleted, or a gap between reference words where either system inserted
words. Per segment i, d_i = (errors of A) − (errors of B); segments where neither system errs do
not exist by construction. With n segments, mean d̄ and sample standard deviation s (n − 1):

    Z = d̄ / (s / √n),   p = 2 (1 − Φ(|Z|))   (two-sided, standard normal)

Choices SCTK's documentation leaves open, made here: segments never cross utterances; an
insertion before the first or after the last reference word is an event in that edge gap; the
error count of a segment is S + D + I of each system within it; with fewer than 2 segments, or
no spread with d̄ = 0, there is no evidence (Z = 0, p = 1); no spread with d̄ ≠ 0 gives |Z| = ∞,
p = 0 (every segment differs the same way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from speechmerge.errors import SpeechmergeError

MIN_GOOD = 2


def _events(ops: str) -> tuple[list[bool], list[int]]:
    """(error flag per reference word, insertions per gap 0..N) of one op string."""
    wrong, inserted = [], [0]
    for op in ops:
        if op == "I":
            inserted[-1] += 1
        else:
            wrong.append(op != "C")
            inserted.append(0)
    return wrong, inserted


def utterance_segments(ops_a: str, ops_b: str, min_good: int = MIN_GOOD) -> list[tuple[int, int]]:
    """The (errors of A, errors of B) of each segment of one utterance."""
    wrong_a, ins_a = _events(ops_a)
    wrong_b, ins_b = _events(ops_b)
    if len(wrong_a) != len(wrong_b):
        raise SpeechmergeError(
            f"alignments over {len(wrong_a)} and {len(wrong_b)} reference words: MAPSSWE compares systems on the same references"
        )
    # events at positions 2k (gap k) and 2j + 1 (reference word j), in order
    events = [(2 * k, ins_a[k], ins_b[k]) for k in range(len(ins_a)) if ins_a[k] or ins_b[k]]
    events += [(2 * j + 1, int(a), int(b)) for j, (a, b) in enumerate(zip(wrong_a, wrong_b)) if a or b]
    events.sort()
    segments: list[list[int]] = []
    previous = None
    for position, errors_a, errors_b in events:
        # reference words strictly between two events are all right in both systems
        between = position // 2 - (previous + 1) // 2 if previous is not None else 0
        if previous is None or between >= min_good:
            segments.append([0, 0])
        segments[-1][0] += errors_a
        segments[-1][1] += errors_b
        previous = position
    return [(a, b) for a, b in segments]


@dataclass(frozen=True)
class Mapsswe:
    """The test's segments (errors of A, of B), the mean and sd of A − B, Z and the two-sided p."""

    segments: list[tuple[int, int]]
    mean: float
    sd: float
    z: float
    p_value: float


def mapsswe(ops_a: Sequence[str], ops_b: Sequence[str], min_good: int = MIN_GOOD) -> Mapsswe:
    """MAPSSWE over utterances aligned one to one (op strings of A and of B)."""
    segments = [s for a, b in zip(ops_a, ops_b, strict=True) for s in utterance_segments(a, b, min_good)]
    differences = np.array([a - b for a, b in segments], dtype=float)
    n = len(differences)
    if n < 2:
        return Mapsswe(segments, float(differences.mean()) if n else 0.0, 0.0, 0.0, 1.0)
    mean, sd = float(differences.mean()), float(differences.std(ddof=1))
    if sd == 0:
        z = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        z = mean / (sd / math.sqrt(n))
    return Mapsswe(segments, mean, sd, z, math.erfc(abs(z) / math.sqrt(2)))
