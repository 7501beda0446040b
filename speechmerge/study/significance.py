"""Intervals and significance for a study's report, from the per-utterance statistics in its store.

One `Resampler` per report: for each evaluation group it draws one set of bootstrap resamples of
that group's utterances (seeded by the group's name) and scores every line (model) on the same
draws, so that any two lines are compared paired, and groups are resampled independently of one
another (a stratified bootstrap for averages over groups). From these resampled scores:

- the interval of a macro average or a normalised score: the percentile interval of the quantity
  recomputed on each resample (`speechmerge.evaluation.bootstrap`);
- line against reference: the paired bootstrap of the difference of the quantity, its p-value
  Holm-adjusted over the family of comparisons the report names (`speechmerge.evaluation.significance`);
- the minimum detectable difference of a group: (z_{1−α/2} + z_{0.8}) × the median over merges
  of the bootstrap standard deviation of (merge − reference) on that group.

A line or group without stored statistics (an older store, a group of one utterance) has no
interval, and the report says so.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Optional

import numpy as np

from speechmerge.evaluation.bootstrap import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Interval,
    draw_counts,
    paired_bootstrap,
    percentile_interval,
    resampled_scores,
)
from speechmerge.evaluation.significance import holm, minimum_detectable_difference
from speechmerge.evaluation.statistics import UtteranceStatistics
from speechmerge.study.summary import Group, Line

Cells = list[tuple[Group, str]]
Samples = Optional[np.ndarray]


def _goodness(metric: str, values: np.ndarray) -> np.ndarray:
    """s = 1 − rate for WER/CER, the score for BLEU/chrF (speechmerge.evaluation.normalised)."""
    return 1.0 - values if metric in ("wer", "cer") else values


def group_draws(name: str, n: int, resamples: int, seed: int) -> np.ndarray:
    """The bootstrap draws of one group, seeded by its name: the same for every model scored on it."""
    return draw_counts(n, resamples, np.random.default_rng([seed, zlib.crc32(name.encode())]))


class Resampler:
    """Bootstrap resamples of a study's groups, shared by every line (see the module docstring)."""

    def __init__(self, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED):
        self.confidence, self.resamples, self.seed = confidence, resamples, seed
        self._order: dict[Group, list[str]] = {}
        self._counts: dict[Group, np.ndarray] = {}
        self._cache: dict[tuple[int, Group, str], Samples] = {}

    def _draws(self, group: Group, ids: list[str]) -> np.ndarray:
        if group not in self._counts:
            name = "/".join((group.scope, group.evaluation, group.language, group.task, group.domain))
            self._order[group] = ids
            self._counts[group] = group_draws(name, len(ids), self.resamples, self.seed)
        return self._counts[group]

    def samples(self, line: Line, group: Group, metric: str) -> Samples:
        """The line's score on each resample of the group; None without statistics for it."""
        key = (id(line), group, metric)
        if key not in self._cache:
            self._cache[key] = self._samples(line, group, metric)
        return self._cache[key]

    def _samples(self, line: Line, group: Group, metric: str) -> Samples:
        stored = line.statistics.get((group, metric))
        if not stored:
            return None
        stats = UtteranceStatistics.model_validate(stored)
        if len(stats.ids) < 2:
            return None
        order = self._order.get(group, stats.ids)
        if sorted(order) != sorted(stats.ids):
            return None  # not the utterances the other lines were scored on
        position = {uid: k for k, uid in enumerate(stats.ids)}
        array = stats.array[[position[uid] for uid in order]]
        return resampled_scores(metric, array.astype(float), self._draws(group, order))

    def average(self, line: Line, cells: Cells) -> Samples:
        """The macro average over the cells the line is scored on, per resample."""
        scored = [(g, m) for g, m in cells if line.get(g, m) is not None]
        drawn = [self.samples(line, g, m) for g, m in scored]
        if not scored or any(d is None for d in drawn):
            return None
        return np.mean(drawn, axis=0)

    def ratio(self, line: Line, reference: Line, cells: Cells) -> Samples:
        """Mean over cells of s(line) / s(reference), per resample (summary.vs_reference)."""
        return self._normalised(line, [reference], cells, lambda m, mine, ref: mine / ref[0])

    def gain(self, line: Line, experts: Line, base: Line, cells: Cells) -> Samples:
        """Mean over cells of (s(line) − s(base)) / (s(experts) − s(base)), per resample."""
        return self._normalised(line, [experts, base], cells, lambda m, mine, ref: (mine - ref[1]) / (ref[0] - ref[1]))

    def _normalised(self, line: Line, references: Sequence[Line], cells: Cells, formula: Callable) -> Samples:
        per_cell = []
        for group, metric in cells:
            values = [line.get(group, metric)] + [r.get(group, metric) for r in references]
            if None in values:
                continue
            drawn = [self.samples(x, group, metric) for x in (line, *references)]
            if any(d is None for d in drawn):
                return None
            goods = [_goodness(metric, d) for d in drawn]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_cell.append(formula(metric, goods[0], goods[1:]))
        if not per_cell:
            return None
        with warnings.catch_warnings():  # a resample where every cell is undefined gives NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(per_cell, axis=0)

    def interval(self, samples: Samples) -> Optional[Interval]:
        if samples is None or not np.isfinite(samples).any():
            return None
        return percentile_interval(samples, self.confidence)


@dataclass(frozen=True)
class Verdict:
    """A line against the reference on one quantity, after Holm over the family."""

    line: str
    quantity: str
    difference: float
    p_value: float
    adjusted: float
    better: bool
    alpha: float

    @property
    def significant(self) -> bool:
        return self.adjusted < self.alpha

    @property
    def marker(self) -> str:
        return MARKERS["better" if self.better else "worse"] if self.significant else MARKERS["same"]


MARKERS = {"better": "▲", "worse": "▼", "same": "="}


def paired_verdicts(
    comparisons: Sequence[tuple[str, str, float, float, np.ndarray, np.ndarray, bool]], alpha: float
) -> list[Verdict]:
    """(line, quantity, observed line, observed reference, samples line, samples reference,
    higher is better) for each comparison of the family: paired bootstrap p-values, Holm-adjusted together."""
    tests = [
        (line, quantity, paired_bootstrap(ref, mine, s_ref, s_mine, higher, 1 - alpha), higher)
        for line, quantity, mine, ref, s_mine, s_ref, higher in comparisons
    ]
    adjusted = holm([t.p_value for _, _, t, _ in tests])
    return [
        Verdict(line, quantity, t.difference, t.p_value, adj, (t.difference > 0) == higher, alpha)
        for (line, quantity, t, higher), adj in zip(tests, adjusted)
    ]


def detectable_differences(
    resampler: Resampler, merges: Sequence[Line], reference: Line, cells: Cells, alpha: float
) -> list[tuple[Group, str, int, float]]:
    """(group, metric, utterances, minimum detectable difference) per cell with statistics."""
    out = []
    for group, metric in cells:
        ref = resampler.samples(reference, group, metric)
        if ref is None:
            continue
        spreads = [
            float(np.nanstd(mine - ref, ddof=1))
            for line in merges
            if line is not reference and (mine := resampler.samples(line, group, metric)) is not None
        ]
        if spreads:
            size = reference.utterances.get(group, 0)
            out.append((group, metric, size, minimum_detectable_difference(median(spreads), alpha=alpha)))
    return out


def interval_text(interval: Optional[Interval], percent: bool) -> str:
    """` [low, high]` in the report's units (percent for rates and normalised scores), or nothing."""
    if interval is None:
        return ""
    scale = 100 if percent else 1
    return f" [{scale * interval.low:.1f}, {scale * interval.high:.1f}]"


GroupKey = tuple[str, str, str, str, str]  # (set, language, task, domain, metric) of a validation score


def _criterion_samples(
    systems: Sequence[dict[GroupKey, dict]], groups: Sequence[GroupKey], criterion: str, resamples: int, seed: int
) -> tuple[list[float], list[np.ndarray]] | None:
    """Mean over groups of vs_expert (or gain_kept) of systems[0], systems[1] (the two compared), against
    systems[2] (the experts) and systems[3] (the base), observed and per resample."""
    observed, drawn = [[], []], [[], []]
    for group in groups:
        stats = [UtteranceStatistics.model_validate(s[group]) for s in systems]
        ids = stats[0].ids
        if len(ids) < 2 or any(sorted(x.ids) != sorted(ids) for x in stats):
            return None
        arrays = [x.array[[x.ids.index(i) for i in ids]].astype(float) for x in stats]
        counts = group_draws("validation/" + "/".join(group), len(ids), resamples, seed)
        metric = group[-1]
        full = [_goodness(metric, np.array([x.score()])) for x in stats]
        resampled = [_goodness(metric, resampled_scores(metric, a, counts)) for a in arrays]
        for k in (0, 1):
            for target, values in ((observed, full), (drawn, resampled)):
                with np.errstate(divide="ignore", invalid="ignore"):
                    value = (
                        values[k] / values[2]
                        if criterion == "vs_expert"
                        else (values[k] - values[3]) / (values[2] - values[3])
                    )
                target[k].append(value)
    if not groups:
        return None
    return [float(np.nanmean(o)) for o in observed], [np.nanmean(d, axis=0) for d in drawn]


def keep_default_unless_better(
    best: dict,
    default: tuple[str, dict] | None,
    statistics: dict[str, dict[GroupKey, dict]],
    experts: dict[GroupKey, dict],
    base: dict[GroupKey, dict],
    criterion: str,
    alpha: float = 0.05,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict:
    """`select: significant`: the method's default setting, unless the best setting on validation
    (`best`, a selection record) is significantly better on the validation criterion (paired
    bootstrap of the difference of mean vs_expert / gain_kept over the groups, p < alpha). Returns
    the selection record, its `criterion` saying which rule chose. `default`: the (job, setting) of
    the method's default point, None when the grid does not hold it."""
    if default is None:
        return {
            **best,
            "criterion": f"{best['criterion']} (select: significant, but the default setting was not searched)",
        }
    default_job, default_setting = default
    if best["job"] == default_job:
        return {**best, "criterion": f"{best['criterion']} (select: significant: the default setting is the best)"}
    mine, theirs = statistics.get(best["job"], {}), statistics.get(default_job, {})
    groups = sorted(g for g in mine if g in theirs and g in experts and (criterion == "vs_expert" or g in base))
    found = _criterion_samples(
        [mine, theirs, experts, base if criterion == "gain_kept" else experts], groups, criterion, resamples, seed
    )
    if found is None:
        return {
            **best,
            "criterion": f"{best['criterion']} (select: significant without per-utterance statistics: the best)",
        }
    (best_value, default_value), (best_samples, default_samples) = found
    test = paired_bootstrap(default_value, best_value, default_samples, best_samples, True, 1 - alpha)
    if test.p_value < alpha and test.difference > 0:
        return {
            **best,
            "criterion": f"{best['criterion']}; select: significant: better than the default setting, p = {test.p_value:.3g}",
        }
    return {
        "job": default_job,
        "setting": default_setting,
        "score": default_value,
        "criterion": f"select: significant: the default setting kept, the best on validation is not significantly better (p = {test.p_value:.3g})",
    }
