"""From decoded text to the numbers a paper reports.

Per utterance: the normalised reference and hypothesis, their word/character edit counts and
the word alignment (transcription), or the raw texts and sacrebleu's sentence statistics
(translation): everything the significance tests resample, so they run from predictions.jsonl
without decoding again. Per group of utterances sharing language,
task, domain and split: corpus-level WER (CER for languages without spaces, or on request)
for `transcribe`, sacrebleu BLEU and chrF for `translate`, and the share of clips whose
detected language is the manifest's. Macro averages: the unweighted mean of a metric over the
groups that have it, per split and over all groups. Every score carries its 95 % bootstrap
interval (`add_intervals`; a group of fewer than 2 utterances has none): per group the percentile
interval over utterances resampled with replacement, per macro average the stratified bootstrap
(each group resampled on its own, the resampled group scores averaged);
`speechmerge.evaluation.bootstrap` gives the procedure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Optional

import numpy as np
from pydantic import BaseModel

from speechmerge.data.manifest import Utterance
from speechmerge.evaluation.bootstrap import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    bootstrap_scores,
    group_seed,
    percentile_interval,
)
from speechmerge.evaluation.metrics import (
    METRICS,
    EditCounts,
    bleu,
    char_edits,
    chrf,
    ops_counts,
    sentence_statistics,
    total,
    word_alignment,
)
from speechmerge.evaluation.normalizers import normalise, normaliser_name, uses_spaces
from speechmerge.evaluation.prediction_cache import CachedDecode
from speechmerge.evaluation.statistics import group_statistics

ALL_SPLITS = "all"


class Prediction(BaseModel):
    """One utterance's prediction and everything scored from it (a line of predictions.jsonl)."""

    id: str
    manifest: str
    audio: str
    language: str
    task: str
    domain: Optional[str] = None
    split: Optional[str] = None
    speaker: Optional[str] = None
    reference: str
    hypothesis: str
    decoded_language: str
    detected_language: Optional[str] = None
    normaliser: Optional[str] = None
    reference_normalised: Optional[str] = None
    hypothesis_normalised: Optional[str] = None
    word_edits: Optional[EditCounts] = None
    char_edits: Optional[EditCounts] = None
    word_ops: Optional[str] = None
    bleu_stats: Optional[list[int]] = None
    chrf_stats: Optional[list[int]] = None

    @property
    def group(self) -> tuple[str, str, str, str]:
        return (self.language, self.task, self.domain or "-", self.split or "-")


class GroupScore(BaseModel):
    """Metrics of the utterances sharing (language, task, domain, split); None = not applicable."""

    language: str
    task: str
    domain: str
    split: str
    utterances: int
    normaliser: Optional[str] = None
    wer: Optional[float] = None
    cer: Optional[float] = None
    bleu: Optional[float] = None
    chrf: Optional[float] = None
    language_id: Optional[float] = None
    intervals: dict[str, tuple[float, float]] = {}  # metric -> (low, high), 95 % bootstrap (add_intervals)

    def metric(self, name: str) -> Optional[float]:
        return getattr(self, name)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.language, self.task, self.domain, self.split)


class MacroScore(BaseModel):
    """Unweighted means over groups, for one split (or all)."""

    split: str
    groups: int
    wer: Optional[float] = None
    cer: Optional[float] = None
    bleu: Optional[float] = None
    chrf: Optional[float] = None
    language_id: Optional[float] = None
    intervals: dict[str, tuple[float, float]] = {}


def score_prediction(utterance: Utterance, manifest: str, decoded: CachedDecode, cer: bool) -> Prediction:
    """Normalise and count edits for a transcription; keep raw texts for a translation."""
    fields = dict(
        id=utterance.id,
        manifest=manifest,
        audio=str(utterance.audio),
        language=utterance.language,
        task=utterance.task,
        domain=utterance.domain,
        split=utterance.split,
        speaker=utterance.speaker,
        reference=utterance.reference,
        hypothesis=decoded.text,
        decoded_language=decoded.language,
        detected_language=decoded.detected_language,
    )
    if utterance.task == "transcribe":
        reference, hypothesis = (
            normalise(utterance.reference, utterance.language),
            normalise(decoded.text, utterance.language),
        )
        spaced = uses_spaces(utterance.language)
        ops = word_alignment(reference, hypothesis) if spaced else None
        fields.update(
            normaliser=normaliser_name(utterance.language),
            reference_normalised=reference,
            hypothesis_normalised=hypothesis,
            word_edits=ops_counts(ops) if spaced else None,
            word_ops=ops,
            char_edits=char_edits(reference, hypothesis) if (cer or not spaced) else None,
        )
    else:
        fields.update(
            bleu_stats=sentence_statistics("bleu", [decoded.text], [utterance.reference])[0],
            chrf_stats=sentence_statistics("chrf", [decoded.text], [utterance.reference])[0],
        )
    return Prediction(**fields)


def _rate(counts: list[Optional[EditCounts]]) -> Optional[float]:
    present = [c for c in counts if c is not None]
    return total(present).rate if present else None


def group_scores(predictions: Sequence[Prediction]) -> tuple[list[GroupScore], dict[str, str]]:
    """One `GroupScore` per (language, task, domain, split), sorted by those labels, and the
    sacrebleu signature of each metric used (`{"bleu": ..., "chrf": ...}`, empty without translations)."""
    groups: dict[tuple[str, str, str, str], list[Prediction]] = defaultdict(list)
    for prediction in predictions:
        groups[prediction.group].append(prediction)
    scores, signatures = [], {}
    for (language, task, domain, split), members in sorted(groups.items()):
        detected = [p.detected_language for p in members if p.detected_language is not None]
        score = GroupScore(
            language=language,
            task=task,
            domain=domain,
            split=split,
            utterances=len(members),
            language_id=sum(found == language for found in detected) / len(detected) if detected else None,
        )
        if task == "transcribe":
            score.normaliser = members[0].normaliser
            score.wer = _rate([p.word_edits for p in members])
            score.cer = _rate([p.char_edits for p in members])
        else:
            hypotheses, references = [p.hypothesis for p in members], [p.reference for p in members]
            for name, metric in (("bleu", bleu), ("chrf", chrf)):
                result = metric(hypotheses, references)
                setattr(score, name, result.score)
                signatures[name] = result.signature
        scores.append(score)
    return scores, signatures


def _mean(values: list[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def macro_scores(groups: Sequence[GroupScore]) -> list[MacroScore]:
    """Macro averages per split, then over all groups (when there is more than one split)."""
    splits = sorted({g.split for g in groups})
    selections = [(split, [g for g in groups if g.split == split]) for split in splits]
    if len(splits) > 1:
        selections.append((ALL_SPLITS, list(groups)))
    return [
        MacroScore(
            split=split,
            groups=len(members),
            **{name: _mean([g.metric(name) for g in members]) for name in (*METRICS, "language_id")},
        )
        for split, members in selections
    ]


def add_intervals(
    groups: Sequence[GroupScore],
    macros: Sequence[MacroScore],
    predictions: Sequence[Prediction],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> None:
    """Fill each score's `intervals`: per group by bootstrap over its utterances, per macro
    average by the stratified bootstrap over the groups it averages (those with an interval)."""
    members: dict[tuple[str, str, str, str], list[Prediction]] = defaultdict(list)
    for prediction in predictions:
        members[prediction.group].append(prediction)
    samples: dict[tuple[tuple[str, str, str, str], str], np.ndarray] = {}
    for group in groups:
        for metric in METRICS:
            stats = group_statistics(members[group.key], metric) if group.metric(metric) is not None else None
            if stats is None or len(stats.ids) < 2:
                continue
            drawn = bootstrap_scores(metric, stats.array, resamples, group_seed(seed, group.key))
            samples[(group.key, metric)] = drawn
            interval = percentile_interval(drawn, confidence)
            group.intervals[metric] = (interval.low, interval.high)
    for macro in macros:
        chosen = [g for g in groups if macro.split in (g.split, ALL_SPLITS)]
        for metric in METRICS:
            drawn = [samples[(g.key, metric)] for g in chosen if (g.key, metric) in samples]
            if drawn and len(drawn) == sum(g.metric(metric) is not None for g in chosen):
                interval = percentile_interval(np.mean(drawn, axis=0), confidence)
                macro.intervals[metric] = (interval.low, interval.high)
