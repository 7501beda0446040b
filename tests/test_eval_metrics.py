"""Metrics and normalisers against hand-computed values and reference implementations written here
from the definitions (BLEU: Papineni et al. 2002; chrF: Popović 2015), and the published
expectations of openai-whisper's normaliser tests."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from speechmerge.evaluation.metrics import EditCounts, bleu, char_edits, chrf, total, word_edits
from speechmerge.evaluation.normalizers import normalise, normaliser_name


# -- normalisers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        # openai-whisper tests/test_normalizer.py
        ("Let's", "let us"),
        ("Mr. Park visited Assoc. Prof. Kim Jr.", "mister park visited associate professor kim junior"),
        ("ninety percent", "90%"),
        ("10km", "10 km"),
        # British -> American through OpenAI's spelling map (only with the map loaded)
        ("Mobilisation of the colour", "mobilization of the color"),
        ("cancelation", "cancellation"),
    ],
)
def test_english_normaliser_matches_whisper(text, expected):
    assert normaliser_name("en") == "whisper-english"
    assert normalise(text, "en") == expected


def test_basic_normaliser_lowercases_strips_punctuation_keeps_diacritics():
    assert normaliser_name("es") == "whisper-basic"
    # marks, symbols and punctuation become spaces; runs of spaces collapse; bracketed text goes
    assert normalise("¿Qué tal, Señor [ruido] García?", "es") == "qué tal señor garcía"
    assert normalise("L'été (bruit) arrive!", "fr") == "l été arrive"


def test_languages_without_spaces_lose_spaces():
    assert normalise("今日は、晴れ。", "ja") == "今日は晴れ"


# -- WER / CER ----------------------------------------------------------------------------------
def test_word_edits_hand_computed():
    # "sat" -> "sit" is a substitution, the second "the" is deleted: 2 errors over 6 words
    counts = word_edits("the cat sat on the mat", "the cat sit on mat")
    assert counts == EditCounts(substitutions=1, deletions=1, insertions=0, reference_length=6)
    assert counts.rate == pytest.approx(2 / 6)
    assert word_edits("a b", "a x b") == EditCounts(insertions=1, reference_length=2)


def test_corpus_wer_sums_edits_before_dividing():
    pairs = [("the cat sat on the mat", "the cat sit on mat"), ("hello world", "hello")]
    corpus = total([word_edits(r, h) for r, h in pairs])
    assert corpus.rate == pytest.approx((2 + 1) / (6 + 2))  # not the mean of 1/3 and 1/2
    assert corpus.rate != pytest.approx((2 / 6 + 1 / 2) / 2)


def test_empty_reference_counts_insertions_only():
    assert word_edits("", "two words") == EditCounts(insertions=2)
    assert math.isnan(total([]).rate)


def test_char_edits_hand_computed():
    # 晴 -> 雨 substituted, れ deleted: 2 errors over 5 characters
    assert char_edits("今日は晴れ", "今日は雨") == EditCounts(substitutions=1, deletions=1, reference_length=5)
    assert char_edits("abc", "abcd").rate == pytest.approx(1 / 3)


# -- BLEU ---------------------------------------------------------------------------------------
def _ngrams(words, n):
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def reference_bleu(hypotheses, references):
    """Corpus BLEU from the definition: clipped n-gram matches and totals summed over the corpus,
    geometric mean of the four precisions, brevity penalty exp(1 - r/c) when c < r."""
    matches, totals = [0] * 4, [0] * 4
    hyp_length = ref_length = 0
    for hypothesis, reference in zip(hypotheses, references):
        h, r = hypothesis.split(), reference.split()
        hyp_length, ref_length = hyp_length + len(h), ref_length + len(r)
        for n in range(1, 5):
            hyp_counts, ref_counts = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
            totals[n - 1] += sum(hyp_counts.values())
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = 1.0 if hyp_length >= ref_length else math.exp(1 - ref_length / hyp_length)
    return 100 * brevity * math.exp(log_precision)


def test_bleu_hand_computed():
    # precisions 5/6, 3/5, 2/4, 1/3 (the second "the" is clipped), equal lengths
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]).score == pytest.approx(expected)


def test_bleu_is_corpus_level_with_brevity_penalty():
    hypotheses = ["the cat sat on the mat", "a dog ran in the big park today"]
    references = ["the cat sat on a mat", "a dog ran in the big green park today"]
    result = bleu(hypotheses, references)
    assert result.score == pytest.approx(reference_bleu(hypotheses, references))
    assert "tok:13a" in result.signature and "version:" in result.signature


def test_bleu_perfect_and_disjoint():
    assert bleu(["an identical sentence of words"], ["an identical sentence of words"]).score == pytest.approx(100)
    assert bleu(["completely different output"], ["nothing in common here"]).score == pytest.approx(0)


# -- chrF ---------------------------------------------------------------------------------------
def reference_chrf(hypotheses, references, order=6, beta=2.0):
    """Popović (2015): character n-grams (whitespace removed) for n = 1..6, corpus-level precision
    and recall per n, averaged over the orders both sides have, then the F-beta of the averages."""
    precisions, recalls = [], []
    for n in range(1, order + 1):
        hyp_total = ref_total = matched = 0
        for hypothesis, reference in zip(hypotheses, references):
            h = _char_ngrams("".join(hypothesis.split()), n)
            r = _char_ngrams("".join(reference.split()), n)
            hyp_total, ref_total = hyp_total + sum(h.values()), ref_total + sum(r.values())
            matched += sum(min(count, r[gram]) for gram, count in h.items())
        if hyp_total and ref_total:
            precisions.append(matched / hyp_total)
            recalls.append(matched / ref_total)
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


def _char_ngrams(text, n):
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def test_chrf_hand_computed():
    # n=1: P=1, R=2/3; n=2: P=1, R=1/2; no 3-grams in the hypothesis.
    # P=1, R=7/12 -> F2 = 5 * 7/12 / (4 + 7/12) = 35/55
    assert chrf(["ab"], ["abc"]).score == pytest.approx(100 * 35 / 55)


def test_chrf_matches_definition_on_sentences():
    hypotheses = ["the cat sat on the mat", "el gato se sentó"]
    references = ["the cat sat on a mat", "el gato está sentado"]
    result = chrf(hypotheses, references)
    assert result.score == pytest.approx(reference_chrf(hypotheses, references))
    assert "nc:6" in result.signature
