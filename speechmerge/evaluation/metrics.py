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

Per utterance, what the significance tests need is kept: the edit counts, the word alignment as
an op string (`C` correct, `S` substitution, `D` deletion, `I` insertion, in alignment order) and
sacrebleu's sentence statistics (the sufficient statistics its corpus score sums).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

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
    return ops_counts(word_alignment(reference, hypothesis))


OP_OF_CHUNK = {"equal": "C", "substitute": "S", "delete": "D", "insert": "I"}


def word_alignment(reference: str, hypothesis: str) -> str:
    """jiwer's minimum edit alignment of one (normalised) pair as an op string, one letter per
    reference word (C, S, D) or inserted hypothesis word (I), in order: `CCSIC`."""
    import jiwer

    if not reference.split():
        return "I" * len(hypothesis.split())
    out = jiwer.process_words(reference, hypothesis)
    ops = []
    for chunk in out.alignments[0]:
        size = (
            chunk.hyp_end_idx - chunk.hyp_start_idx
            if chunk.type == "insert"
            else chunk.ref_end_idx - chunk.ref_start_idx
        )
        ops.append(OP_OF_CHUNK[chunk.type] * size)
    return "".join(ops)


def ops_counts(ops: str) -> EditCounts:
    """The edit counts of an op string: N = correct + substituted + deleted reference words."""
    return EditCounts(ops.count("S"), ops.count("D"), ops.count("I"), len(ops) - ops.count("I"))


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


SACREBLEU_METRICS = ("bleu", "chrf")


@cache
def _sacrebleu_metric(name: str):
    """One sacrebleu metric object per name, at its defaults (scoring from statistics keeps no state)."""
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU, "chrf": CHRF}[name]()


def sentence_statistics(name: str, hypotheses: Sequence[str], references: Sequence[str]) -> list[list[int]]:
    """sacrebleu's sufficient statistics of each segment for `bleu` (hypothesis and reference
    lengths, matched and total n-grams of orders 1-4) or `chrf` (per character n-gram order:
    hypothesis, reference and matched counts), with the metric's default settings."""
    metric = _sacrebleu_metric(name)
    return [[int(v) for v in row] for row in metric._extract_corpus_statistics(list(hypotheses), [list(references)])]


def score_from_statistics(name: str, summed) -> float:
    """sacrebleu's corpus score from summed sentence statistics (what its bootstrap recomputes)."""
    return float(_sacrebleu_metric(name)._compute_score_from_stats(list(summed)).score)


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
