"""The search objective as the studies score a model on validation.

A model's validation predictions give one value per (set, language, task, domain, metric) group;
the objective is the study's selection score of those values (`speechmerge.study.selection.best_point`):
the mean over groups of each group's primary metric (WER, else CER, for transcription; BLEU, else
chrF, for translation), normalised by the expert covering the group and the base
(`speechmerge.evaluation.relative_scores`):

    vs_expert   s(m, g) / s(e_g, g)
    gain_kept   (s(m, g) − s(b, g)) / (s(e_g, g) − s(b, g))

with s = 1 − WER or BLEU. Groups no expert covers are left out, as in studies; when no group has
a defined normalised score, the raw score 1 − WER, BLEU/100 is averaged instead. The expert
covering a group is read from the expert's training record (`speechmerge_training.json`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speechmerge.evaluation.metrics import METRICS
from speechmerge.evaluation.scoring import Prediction, group_scores
from speechmerge.study.selection import GroupMetric, best_point

SET = "validation"


def group_values(predictions: Sequence[Prediction]) -> dict[GroupMetric, float]:
    """Every metric of every (language, task, domain) group of the predictions."""
    groups, _ = group_scores(predictions)
    return {
        (SET, g.language, g.task, g.domain, metric): g.metric(metric)
        for g in groups
        for metric in METRICS
        if g.metric(metric) is not None
    }


@dataclass(frozen=True)
class References:
    """The validation scores the objective normalises by: each group's covering expert and the base."""

    expert: dict[GroupMetric, float] = field(default_factory=dict)
    base: dict[GroupMetric, float] = field(default_factory=dict)


def study_score(values: dict[GroupMetric, float], references: References, criterion: str) -> float:
    """The study's selection score of one model's group values (−inf when nothing is scored)."""
    best = best_point([("model", {}, values)], references.expert, references.base, criterion)
    return best["score"] if best else -math.inf


def covered_groups(expert: Path) -> list:
    """The data selections an expert was trained on (empty when it has no training record)."""
    from speechmerge.errors import SpeechmergeError
    from speechmerge.training.expert import read_training_record

    try:
        return list(read_training_record(Path(expert)).data)
    except SpeechmergeError:
        return []


def covering_expert(selections: list[list], language: str, task: str, domain: str) -> int | None:
    """The index of the first expert whose training data keeps (language, task, domain)."""
    return next(
        (i for i, chosen in enumerate(selections) if any(s.keeps(language, task, domain) for s in chosen)), None
    )
