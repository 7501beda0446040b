"""Each method's setting, chosen on validation: the grid point with the best mean normalised score
over its groups' primary metrics (WER, else CER, for transcription; BLEU, else chrF, for
translation), normalised as in `speechmerge.evaluation.relative_scores`:

    vs_expert   s(m, g) / s(e_g, g)
    gain_kept   (s(m, g) - s(b, g)) / (s(e_g, g) - s(b, g))

with s = 1 - rate for WER/CER and s = the score for BLEU/chrF, e_g the expert covering group g
and b the base.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from speechmerge.study.plan import StudyPlan
    from speechmerge.study.store import Store

PRIMARY_METRICS = {"transcribe": ("wer", "cer"), "translate": ("bleu", "chrf")}
FALLBACK_PRIMARY = ("wer", "bleu", "cer", "chrf")

GroupMetric = tuple[str, str, str, str, str]  # (evaluation set, language, task, domain, metric)


def primary_metric(task: str, available: Iterable[str]) -> str | None:
    """WER (else CER) for transcription, BLEU (else chrF) for translation; for another task the
    first of WER, BLEU, CER, chrF it was scored with."""
    available = set(available)
    return next((name for name in PRIMARY_METRICS.get(task, FALLBACK_PRIMARY) if name in available), None)


def select_settings(plan: StudyPlan, store: Store) -> list[dict]:
    """Per method, the grid point with the best validation score (`best_point`); stored and returned."""
    by_job: dict[str, dict[GroupMetric, float]] = {}
    for row in store.scores():
        if row["stage"] == "validation":
            group = (row["evaluation"], row["language"], row["task"], row["domain"], row["metric"])
            by_job.setdefault(row["job"], {})[group] = row["value"]
    base = by_job.get(next(j.key for j in plan.references if j.model_kind == "base"), {})
    expert_jobs = {j.model: j.key for j in plan.references if j.model_kind == "expert"}
    own_expert: dict[GroupMetric, float] = {}
    for values in by_job.values():
        for group in values:
            expert = next((g.name for g in plan.data.experts if g.covers(*group[1:4])), None)
            if expert in expert_jobs and group in by_job.get(expert_jobs[expert], {}):
                own_expert[group] = by_job[expert_jobs[expert]][group]
    chosen = []
    for method in plan.grid:
        candidates = [
            (j.key, j.setting, by_job[j.key]) for j in plan.validation if j.method == method and j.key in by_job
        ]
        best = best_point(candidates, own_expert, base, plan.recipe.evaluation.select_by)
        if best:
            chosen.append({"method": method, **best})
    store.set_selections(chosen)
    return chosen


def best_point(
    candidates: list[tuple[str, dict, dict[GroupMetric, float]]],
    expert: dict[GroupMetric, float],
    base: dict[GroupMetric, float],
    criterion: str,
) -> dict | None:
    """The candidate (job, setting, {(set, language, task, domain, metric): value}) with the highest mean
    score over its groups' primary metrics: `vs_expert` or `gain_kept` against the expert covering
    each group. When no candidate has a defined one (an expert no better than zero or than the
    base), the raw score decides instead: 1 - WER, BLEU / 100. Ties keep the first candidate."""
    from speechmerge.evaluation.relative_scores import gain_kept, higher_is_better_score, vs_expert

    def normalised(group: GroupMetric, value: float) -> float:
        metric = group[-1]
        if group not in expert or (criterion == "gain_kept" and group not in base):
            return math.nan
        if criterion == "vs_expert":
            return vs_expert(metric, value, expert[group])
        return gain_kept(metric, value, expert[group], base[group])

    def raw(group: GroupMetric, value: float) -> float:
        metric = group[-1]
        return higher_is_better_score(metric, value) / (100.0 if metric in ("bleu", "chrf") else 1.0)

    for rule, label in (
        (normalised, f"mean {criterion} on validation"),
        (raw, "mean raw score on validation (1-WER, BLEU/100): no defined normalised score"),
    ):
        best = None
        for job, setting, values in candidates:
            score = _mean_primary(values, rule)
            if score is not None and (best is None or score > best["score"]):
                best = {"job": job, "setting": setting, "score": score, "criterion": label}
        if best:
            return best
    return None


def _mean_primary(values: dict[GroupMetric, float], rule) -> float | None:
    """The mean of `rule(group, value)` over each group's primary metric, NaNs left out (None if all are)."""
    scored: dict[tuple[str, ...], set[str]] = {}
    for *group, metric in values:
        scored.setdefault(tuple(group), set()).add(metric)
    scores = [rule(g, v) for g, v in values.items() if g[-1] == primary_metric(g[2], scored[g[:-1]])]
    kept = [x for x in scores if not math.isnan(x)]
    return sum(kept) / len(kept) if kept else None
