"""Bootstrap intervals and the paired bootstrap test over utterances (Bisani & Ney 2004).

A resample draws the set's units with replacement, as many as there are: utterances, or whole
speakers when `blocks` names each utterance's speaker (speaker-blocked resampling: utterances of
one speaker are not independent). A unit's statistics are the sum of its utterances', and a
resample's corpus score is computed from the summed statistics exactly as the full set's is:
WER = Σ(S + D + I) / ΣN, BLEU/chrF by sacrebleu from its summed sentence statistics. Indices are
drawn as sacrebleu draws them (`numpy.random.default_rng(seed).choice(n, (R, n))`), so with the
same seed one system's BLEU resamples are sacrebleu's own.

- interval: the percentile interval of the R resampled scores at `confidence`;
- stratified (macro averages, normalised performance): every group resampled on its own, the
  groups' resampled scores combined resample by resample;
- paired (two systems on the same utterances): both scored on the same resamples; Δ* = B* − A*.
  Probability of improvement: the share of resamples where B is better. Two-sided p-value by
  inverting the percentile interval (Efron & Tibshirani 1993, §15.4): twice the share of
  resamples on the far side of 0, p = min(1, 2 (1 + min(#{Δ* ≤ 0}, #{Δ* ≥ 0})) / (R + 1)), so
  p < 1 − c exactly when the c percentile interval of Δ excludes 0 (up to the +1, which keeps a
  p-value from R resamples above 0).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.statistics import corpus_scores

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 12345  # sacrebleu's default seed


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval [low, high] at `confidence`."""

    low: float
    high: float
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def group_seed(seed: int, group: Sequence[str]) -> list[int]:
    """The seed of one group's resamples: its own per group (so the groups of a stratified
    bootstrap are drawn independently) and stable whatever other groups are scored with it, so
    `speechmerge eval` and `speechmerge compare` draw the same resamples of a group."""
    return [seed, zlib.crc32("/".join(group).encode())]


def units(stats: np.ndarray, blocks: Optional[Sequence[Optional[str]]] = None) -> np.ndarray:
    """Per-unit statistics: the utterances themselves, or summed per block (speaker). Utterances
    without a speaker are each their own block."""
    stats = np.asarray(stats, dtype=np.float64)
    if blocks is None:
        return stats
    names = [b if b is not None else f"\0{i}" for i, b in enumerate(blocks)]
    order = {name: k for k, name in enumerate(dict.fromkeys(names))}
    out = np.zeros((len(order), stats.shape[1]))
    np.add.at(out, [order[n] for n in names], stats)
    return out


def draw_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n): how often each of n units is drawn in each resample."""
    if n < 2:
        raise SpeechmergeError(f"{n} utterance{'s' if n != 1 else ''}: a bootstrap needs at least 2; no interval")
    indices = rng.choice(n, size=(resamples, n), replace=True)
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.repeat(np.arange(resamples), n), indices.ravel()), 1.0)
    return counts


def resampled_scores(metric: str, unit_stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The corpus score of each resample: one value per row of `counts`."""
    return corpus_scores(metric, counts @ unit_stats)


def percentile_interval(samples: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2
    kept = samples[np.isfinite(samples)]
    if not kept.size:  # e.g. a group whose references are all empty: no rate to resample
        return Interval(float("nan"), float("nan"), confidence)
    low, high = np.quantile(kept, [tail, 1 - tail])
    return Interval(float(low), float(high), confidence)


def bootstrap_scores(
    metric: str,
    stats: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int | Sequence[int] = SEED,
    blocks: Optional[Sequence[Optional[str]]] = None,
) -> np.ndarray:
    """R resampled corpus scores of one system on one group (`seed` as numpy.random.default_rng takes it)."""
    unit_stats = units(stats, blocks)
    return resampled_scores(metric, unit_stats, draw_counts(len(unit_stats), resamples, np.random.default_rng(seed)))


def paired_bootstrap_scores(
    metric: str,
    systems: Sequence[np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    blocks: Optional[Sequence[Optional[str]]] = None,
) -> list[np.ndarray]:
    """R resampled corpus scores of each system, all on the same resamples of the same utterances."""
    unit_stats = [units(s, blocks) for s in systems]
    counts = draw_counts(len(unit_stats[0]), resamples, np.random.default_rng(seed))
    return [resampled_scores(metric, u, counts) for u in unit_stats]


@dataclass(frozen=True)
class PairedBootstrap:
    """B − A on the same utterances: the observed difference, its interval, the probability that
    B is better and the two-sided p-value of "no difference"."""

    difference: float
    interval: Interval
    probability_of_improvement: float
    p_value: float
    sd: float  # the bootstrap standard deviation of the difference


def paired_bootstrap(
    observed_a: float,
    observed_b: float,
    samples_a: np.ndarray,
    samples_b: np.ndarray,
    higher_is_better: bool,
    confidence: float = CONFIDENCE,
) -> PairedBootstrap:
    """The paired bootstrap test from two systems' scores on the same resamples (Bisani & Ney 2004;
    p-value as in the module docstring)."""
    deltas = samples_b - samples_a
    keep = np.isfinite(deltas)
    deltas = deltas[keep]
    observed = observed_b - observed_a
    better = deltas > 0 if higher_is_better else deltas < 0
    far_side = min(int((deltas <= 0).sum()), int((deltas >= 0).sum()))
    return PairedBootstrap(
        difference=observed,
        interval=percentile_interval(deltas, confidence),
        probability_of_improvement=float(better.mean()),
        p_value=min(1.0, 2 * (1 + far_side) / (len(deltas) + 1)),
        sd=float(deltas.std(ddof=1)) if len(deltas) > 1 else float("nan"),
    )
