"""Is B better than A? Intervals and paired tests of one group, macro averages, many comparisons.

Per group and metric (two systems on the same utterances, `UtteranceStatistics`):

- each system's score with its percentile bootstrap interval, and the paired bootstrap of B − A
  (`speechmerge.evaluation.bootstrap`: Bisani & Ney 2004), for every metric;
- WER: MAPSSWE (`speechmerge.evaluation.mapsswe`, NIST SCTK);
- BLEU/chrF: sacrebleu's own paired bootstrap resampling (Koehn 2004) and approximate
  randomisation (Riezler & Maxwell 2005), called through `sacrebleu.significance.PairedTest` with
  the first system as the baseline, the same seed (`SACREBLEU_SEED`) and sample counts.

A difference is called significant when the group's primary test, the paired bootstrap (for
BLEU/chrF on sacrebleu's scores of the resamples), gives p < 1 − confidence. sacrebleu's own
p-values are reported beside it but do not decide: sacrebleu 2.6 counts only resampled
differences strictly greater than the observed one, so two identical systems get its smallest
p-value (1/(R + 1)) instead of 1. Macro averages
use the stratified paired bootstrap: each group resampled on its own (the same draws for A and
B), the resampled group scores averaged. Many methods against one reference: Holm (1979)
step-down adjustment over the family. The minimum detectable difference of a paired two-sided
test at level α with power 1 − β is (z_{1−α/2} + z_{1−β}) · sd(Δ*), with sd(Δ*) the bootstrap
standard deviation of the paired difference (normal approximation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Optional

import numpy as np

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.bootstrap import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Interval,
    PairedBootstrap,
    paired_bootstrap,
    paired_bootstrap_scores,
    percentile_interval,
)
from speechmerge.evaluation.mapsswe import mapsswe
from speechmerge.evaluation.statistics import UtteranceStatistics, pair_up

HIGHER_IS_BETTER = {"wer": False, "cer": False, "bleu": True, "chrf": True}
PERCENT = {"wer": True, "cer": True, "bleu": False, "chrf": False}
LABELS = {"wer": "WER", "cer": "CER", "bleu": "BLEU", "chrf": "chrF"}
AR_TRIALS = 10_000  # sacrebleu's default for --paired-ar
ALPHA, POWER = 0.05, 0.8


@contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    """sacrebleu reads its seed from the environment (`SACREBLEU_SEED`) when a test is set up."""
    saved = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = saved


def sacrebleu_paired_p(
    metric: str,
    references: Sequence[str],
    baseline: Sequence[str],
    system: Sequence[str],
    test: str,
    samples: int,
    seed: int = SEED,
) -> float:
    """The p-value sacrebleu's `--paired-bs` (test="bs") or `--paired-ar` (test="ar") gives the
    system against the baseline, with `samples` resamples or trials and `seed` (≥ 1: sacrebleu
    treats 0 as unseeded)."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    if seed < 1:
        raise SpeechmergeError(f"seed {seed}: sacrebleu's paired tests need a seed of 1 or more")
    with _sacrebleu_seed(seed):
        paired = PairedTest(
            [("A", list(baseline)), ("B", list(system))],
            {metric: BLEU() if metric == "bleu" else CHRF()},
            [list(references)],
            test_type=test,
            n_samples=samples,
        )
        _, scores = paired()
    (result,) = [values[1] for name, values in scores.items() if name != "System"]
    return float(result.p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the given order: the k-th smallest of m becomes
    max over j ≤ k of min(1, (m − j + 1) p_(j)); reject where the adjusted p < α."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def minimum_detectable_difference(sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a paired two-sided test at level `alpha` detects with
    probability `power`, given the standard deviation of the difference's estimate."""
    normal = NormalDist()
    return (normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)) * sd


@dataclass(frozen=True)
class Comparison:
    """A against B on one group (or a macro average) for one metric."""

    label: str
    metric: str
    utterances: int
    score_a: float
    score_b: float
    interval_a: Interval
    interval_b: Interval
    paired: PairedBootstrap
    tests: dict[str, float] = field(default_factory=dict)  # test name -> p-value, the primary test first
    groups: int = 1

    @property
    def confidence(self) -> float:
        return self.interval_a.confidence

    @property
    def primary_p(self) -> float:
        return next(iter(self.tests.values()))

    @property
    def significant(self) -> bool:
        return self.primary_p < 1 - self.confidence

    @property
    def b_is_better(self) -> bool:
        return (self.paired.difference > 0) == HIGHER_IS_BETTER[self.metric]

    @property
    def minimum_detectable(self) -> float:
        return minimum_detectable_difference(self.paired.sd, alpha=1 - self.confidence)

    def verdict(self, name_a: str = "A", name_b: str = "B") -> str:
        """One plain line: who is better (or no significant difference), by how much, the p-values."""
        scale = 100 if PERCENT[self.metric] else 1
        unit = f"{LABELS[self.metric]} points"
        low, high = scale * self.paired.interval.low, scale * self.paired.interval.high
        effect = f"{_signed(scale * self.paired.difference)} {unit} [{_signed(low)}, {_signed(high)}]"
        tests = ", ".join(f"p = {_p(p)} ({name})" for name, p in self.tests.items())
        if not self.significant:
            head = f"no significant difference between {name_a} and {name_b} on {self.label}"
        elif self.b_is_better:
            head = f"{name_b} is better than {name_a} on {self.label}"
        else:
            head = f"{name_b} is worse than {name_a} on {self.label}"
        return f"{head}: {effect}, {tests}"


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else "< 0.001"


def compare_group(
    label: str,
    a: UtteranceStatistics,
    b: UtteranceStatistics,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    by_speaker: bool = False,
    ar_trials: int = AR_TRIALS,
    draws: int | Sequence[int] | None = None,
) -> Comparison:
    """Both scores with their intervals, the paired bootstrap of B − A, and the metric's tests.
    `draws` seeds the bootstrap resamples (default `seed`; `group_seed` gives eval's per-group
    draws); `seed` seeds sacrebleu's tests."""
    b = pair_up(a, b, label)
    if len(a.ids) < 2:
        raise SpeechmergeError(
            f"{label}: {len(a.ids)} utterance{'s' if len(a.ids) != 1 else ''}, no interval or test is possible; "
            "a group needs at least 2 utterances"
        )
    metric = a.metric
    blocks = _speakers(a, label) if by_speaker else None
    draws = seed if draws is None else draws
    samples_a, samples_b = paired_bootstrap_scores(metric, [a.array, b.array], resamples, draws, blocks)
    score_a, score_b = a.score(), b.score()
    paired = paired_bootstrap(score_a, score_b, samples_a, samples_b, HIGHER_IS_BETTER[metric], confidence)
    tests: dict[str, float] = {}
    if metric in ("wer", "cer"):
        tests["paired bootstrap"] = paired.p_value
        if metric == "wer" and a.ops is not None and b.ops is not None:
            tests["MAPSSWE"] = mapsswe(a.ops, b.ops).p_value
    else:
        references = a.references
        if references != b.references:
            raise SpeechmergeError(f"{label}: the two evaluations have different references; compare on the same data")
        tests["paired bootstrap"] = paired.p_value
        tests["sacrebleu paired bootstrap"] = sacrebleu_paired_p(
            metric, references, a.hypotheses, b.hypotheses, "bs", resamples, seed
        )
        tests["sacrebleu approximate randomisation"] = sacrebleu_paired_p(
            metric, references, a.hypotheses, b.hypotheses, "ar", ar_trials, seed
        )
    return Comparison(
        label,
        metric,
        len(a.ids),
        score_a,
        score_b,
        percentile_interval(samples_a, confidence),
        percentile_interval(samples_b, confidence),
        paired,
        tests,
    )


def _speakers(stats: UtteranceStatistics, label: str) -> list[Optional[str]]:
    if all(s is None for s in stats.speakers):
        raise SpeechmergeError(
            f"{label}: no utterance names a speaker; speaker-blocked resampling needs a `speaker` in the manifests"
        )
    return stats.speakers


def compare_macro(
    label: str,
    pairs: Sequence[tuple[UtteranceStatistics, UtteranceStatistics]],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    by_speaker: bool = False,
    draws: Sequence[int | Sequence[int]] | None = None,
) -> Comparison:
    """The unweighted mean over groups of one metric, by the stratified paired bootstrap (each
    group resampled on its own with its own draws, shared by A and B; `draws`: one seed per
    group, default derived from `seed`)."""
    metric = pairs[0][0].metric
    draws = draws or [[seed, index] for index in range(len(pairs))]
    sums_a, sums_b, observed_a, observed_b = [], [], [], []
    for (a, b), group_draws in zip(pairs, draws, strict=True):
        b = pair_up(a, b, label)
        blocks = _speakers(a, label) if by_speaker else None
        samples_a, samples_b = paired_bootstrap_scores(metric, [a.array, b.array], resamples, group_draws, blocks)
        sums_a.append(samples_a)
        sums_b.append(samples_b)
        observed_a.append(a.score())
        observed_b.append(b.score())
    mean_a, mean_b = np.mean(sums_a, axis=0), np.mean(sums_b, axis=0)
    score_a, score_b = float(np.mean(observed_a)), float(np.mean(observed_b))
    paired = paired_bootstrap(score_a, score_b, mean_a, mean_b, HIGHER_IS_BETTER[metric], confidence)
    return Comparison(
        label,
        metric,
        sum(len(a.ids) for a, _ in pairs),
        score_a,
        score_b,
        percentile_interval(mean_a, confidence),
        percentile_interval(mean_b, confidence),
        paired,
        {"stratified paired bootstrap": paired.p_value},
        groups=len(pairs),
    )
