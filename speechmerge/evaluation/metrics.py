"""Corpus-level metrics: WER and CER (jiwer), BLEU and chrF (sacrebleu).

WER = (S + D + I) / N over a whole set: substitutions, deletions and insertions of the minimum
edit alignment of each normalised hypothesis with its normalised reference, summed over the
set, divided by the number of reference words N (Levenshtein alignment as in jiwer; Morris et
al. 2004). CER is the same over characters (spaces included). An empty reference contributes
its hypothesis' words as insertions and nothing to N.

BLEU (Papineni et al. 2002) and chrF (Popović 2015, beta 2, character 6-grams) are sacrebleu's
corpus scores on the raw (un-normalised) texts with its defaults (13a tokenisation,
case-sensitive, exponential smoothing), as speech-translation papers report them (Post 2018);
the signature records every setting and the version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Every metric the evaluator scores, in the order tables show them.
METRICS = ("wer", "cer", "bleu", "chrf")


@dataclass(frozen=True)
class EditCounts:
    """Edit operations of one alignment (or a sum of them) and the reference length N."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )

    @property
    def rate(self) -> float:
        """(S + D + I) / N; NaN when the references are empty."""
        return self.errors / self.reference_length if self.reference_length else float("nan")


def word_edits(reference: str, hypothesis: str) -> EditCounts:
    """Word-level edit counts of one (normalised) pair."""
    import jiwer

    if not reference.split():
        return EditCounts(insertions=len(hypothesis.split()))
    out = jiwer.process_words(reference, hypothesis)
    return EditCounts(out.substitutions, out.deletions, out.insertions, out.substitutions + out.deletions + out.hits)


def char_edits(reference: str, hypothesis: str) -> EditCounts:
    """Character-level edit counts of one (normalised) pair."""
    import jiwer

    if not reference:
        return EditCounts(insertions=len(hypothesis))
    out = jiwer.process_characters(reference, hypothesis)
    return EditCounts(out.substitutions, out.deletions, out.insertions, out.substitutions + out.deletions + out.hits)


def total(counts: Sequence[EditCounts]) -> EditCounts:
    """The sum of per-utterance counts: its `rate` is the corpus-level WER/CER."""
    return sum(counts, EditCounts())


@dataclass(frozen=True)
class CorpusScore:
    """A sacrebleu corpus score (0-100) and the signature that makes it reproducible."""

    score: float
    signature: str


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """sacrebleu corpus BLEU with one reference per segment."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore(result.score, str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """sacrebleu corpus chrF (chrF2: character 6-grams, beta 2) with one reference per segment."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore(result.score, str(metric.get_signature()))
