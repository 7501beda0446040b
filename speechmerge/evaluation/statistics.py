"""Per-utterance statistics of one group and metric: what intervals and paired tests resample.

`UtteranceStatistics` is the stored form (predictions.jsonl carries the same facts per line; the
study store keeps one record per model, group and metric): the utterance ids (and speakers), one
row of sufficient statistics per utterance, and what a paired test needs beyond them — the word
alignments for MAPSSWE, the raw texts for sacrebleu's paired tests.

    wer, cer     [S, D, I, N]   corpus rate = Σ(S + D + I) / ΣN
    bleu, chrf   sacrebleu's sentence statistics; corpus score = sacrebleu's score of their sum
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
from pydantic import BaseModel

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.metrics import SACREBLEU_METRICS, EditCounts, score_from_statistics

RATE_METRICS = ("wer", "cer")


class UtteranceStatistics(BaseModel):
    """One group's per-utterance statistics for one metric, in utterance order."""

    metric: str
    ids: list[str]
    speakers: list[Optional[str]]
    stats: list[list[int]]
    ops: Optional[list[str]] = None  # wer: the word alignment of each utterance (C/S/D/I)
    hypotheses: Optional[list[str]] = None  # bleu/chrf: the raw texts sacrebleu's paired tests take
    references: Optional[list[str]] = None

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.stats, dtype=np.int64).reshape(len(self.stats), -1)

    def score(self) -> float:
        """The corpus score of the whole group (rate as a fraction, sacrebleu 0-100)."""
        return corpus_score(self.metric, self.array.sum(axis=0))


def _counts(edits: EditCounts) -> list[int]:
    return [edits.substitutions, edits.deletions, edits.insertions, edits.reference_length]


def group_statistics(predictions: Sequence, metric: str) -> Optional[UtteranceStatistics]:
    """The statistics of `metric` over predictions (scoring.Prediction) of one group; None when
    the group was not scored with it."""
    field = {"wer": "word_edits", "cer": "char_edits", "bleu": "bleu_stats", "chrf": "chrf_stats"}[metric]
    kept = [p for p in predictions if getattr(p, field) is not None]
    if not kept:
        return None
    rows = [_counts(getattr(p, field)) if metric in RATE_METRICS else list(getattr(p, field)) for p in kept]
    text = metric in SACREBLEU_METRICS
    return UtteranceStatistics(
        metric=metric,
        ids=[p.id for p in kept],
        speakers=[p.speaker for p in kept],
        stats=rows,
        ops=[p.word_ops for p in kept] if metric == "wer" and all(p.word_ops is not None for p in kept) else None,
        hypotheses=[p.hypothesis for p in kept] if text else None,
        references=[p.reference for p in kept] if text else None,
    )


def corpus_score(metric: str, summed: np.ndarray) -> float:
    """A corpus score from summed statistics: Σ(S+D+I)/ΣN for rates, sacrebleu's for BLEU/chrF."""
    if metric in RATE_METRICS:
        return float(summed[:3].sum() / summed[3]) if summed[3] else float("nan")
    return score_from_statistics(metric, summed)


def corpus_scores(metric: str, summed: np.ndarray) -> np.ndarray:
    """`corpus_score` of each row of summed statistics (one row per resample), vectorised for rates."""
    if metric in RATE_METRICS:
        with np.errstate(invalid="ignore", divide="ignore"):
            return summed[:, :3].sum(axis=1) / summed[:, 3]
    return np.array([score_from_statistics(metric, row) for row in summed])


def pair_up(a: UtteranceStatistics, b: UtteranceStatistics, where: str) -> UtteranceStatistics:
    """`b` in `a`'s utterance order; refused (naming the ids that differ) when the two are not on
    the same utterances."""
    if a.metric != b.metric:
        raise SpeechmergeError(f"{where}: comparing {a.metric} with {b.metric}; a paired test compares one metric")
    if a.ids == b.ids:
        return b
    only_a, only_b = sorted(set(a.ids) - set(b.ids)), sorted(set(b.ids) - set(a.ids))
    if not only_a and not only_b and len(set(a.ids)) == len(a.ids) == len(b.ids):
        order = [b.ids.index(i) for i in a.ids]
        fields = ("ids", "speakers", "stats", "ops", "hypotheses", "references")
        return b.model_copy(update={f: [getattr(b, f)[k] for k in order] for f in fields if getattr(b, f) is not None})
    shown = ", ".join([f"{i!r} only in A" for i in only_a[:3]] + [f"{i!r} only in B" for i in only_b[:3]])
    more = ", ..." if len(only_a) > 3 or len(only_b) > 3 else ""
    raise SpeechmergeError(
        f"{where}: the two evaluations are not on the same utterances ({shown or 'repeated ids'}{more}); "
        "evaluate both models on the same data"
    )
