"""Normalised performance: a model's score on each task relative to that task's expert and base.

Every metric is first turned into a score s where higher is better: s = BLEU or chrF as they
are, s = 1 - WER (word accuracy; error rates as fractions, not percent) for WER and CER.
For a model m on task t, with e_t the expert fine-tuned on t and b the base model:

    vs_expert(m, t) = s(m, t) / s(e_t, t)
        the normalised accuracy of task arithmetic (Ilharco et al. 2023, sec. 3), TSV-M
        (Gargiulo et al. 2025) and Iso-C/CTS (Marczak et al. 2025): 1 = as good as the expert;
        defined when s(e_t, t) > 0.

    gain_kept(m, t) = (s(m, t) - s(b, t)) / (s(e_t, t) - s(b, t))
        = (WER_b - WER_m) / (WER_b - WER_e) for error rates: the fraction of the expert's
        improvement over the base that m keeps (a min-max normalisation between base and
        expert); 1 = the expert's gain, 0 = no better than the base, < 0 = worse than the base;
        defined when the expert improves on the base, s(e_t, t) > s(b, t).

A model's normalised performance is the arithmetic mean over its tasks of each quantity
(tasks where it is undefined are left out and counted). LoRS-Merging reports a "normalised
performance" whose formula is not published; these two definitions are ours, stated so that
a reader can recompute them from the raw scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

ERROR_RATES = ("wer", "cer")
SCORES = ("bleu", "chrf")


def higher_is_better_score(metric: str, value: float) -> float:
    """The metric as a score where higher is better: 1 - rate for WER/CER, the value for BLEU/chrF."""
    if metric in ERROR_RATES:
        return 1.0 - value
    if metric in SCORES:
        return value
    raise ValueError(f"unknown metric {metric!r}; expected one of {ERROR_RATES + SCORES}")


def vs_expert(metric: str, model: float, expert: float) -> float:
    """s(m) / s(e); NaN when the expert's score is not positive."""
    s_model, s_expert = higher_is_better_score(metric, model), higher_is_better_score(metric, expert)
    return s_model / s_expert if s_expert > 0 else math.nan


def gain_kept(metric: str, model: float, expert: float, base: float) -> float:
    """(s(m) - s(b)) / (s(e) - s(b)); NaN when the expert does not improve on the base."""
    s_model, s_expert, s_base = (higher_is_better_score(metric, x) for x in (model, expert, base))
    gain = s_expert - s_base
    return (s_model - s_base) / gain if gain > 0 else math.nan


@dataclass(frozen=True)
class TaskNormalised:
    """One task of one model: its raw scores and both normalisations."""

    task: str
    model: float
    expert: float
    base: float
    vs_expert: float
    gain_kept: float


@dataclass(frozen=True)
class NormalisedPerformance:
    """Per-task normalisations of one model and their means over tasks (NaN tasks left out)."""

    metric: str
    tasks: list[TaskNormalised] = field(default_factory=list)

    @property
    def mean_vs_expert(self) -> float:
        return _mean(t.vs_expert for t in self.tasks)

    @property
    def mean_gain_kept(self) -> float:
        return _mean(t.gain_kept for t in self.tasks)

    @property
    def undefined(self) -> dict[str, int]:
        """How many tasks each quantity could not be computed for."""
        return {
            "vs_expert": sum(math.isnan(t.vs_expert) for t in self.tasks),
            "gain_kept": sum(math.isnan(t.gain_kept) for t in self.tasks),
        }


def _mean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def normalised_performance(
    metric: str, model: Mapping[str, float], experts: Mapping[str, float], base: Mapping[str, float]
) -> NormalisedPerformance:
    """Normalise a model's per-task scores by each task's expert score and the base's score.

    `model`, `experts`, `base` map a task name (e.g. "es/transcribe") to the metric's value
    on that task; the model's tasks must all appear in the other two."""
    missing = sorted(t for t in model if t not in experts or t not in base)
    if missing:
        raise ValueError(f"task {missing[0]!r} has no expert or base score; normalised performance needs both")
    tasks = [
        TaskNormalised(
            task,
            value,
            experts[task],
            base[task],
            vs_expert(metric, value, experts[task]),
            gain_kept(metric, value, experts[task], base[task]),
        )
        for task, value in sorted(model.items())
    ]
    return NormalisedPerformance(metric, tasks)
