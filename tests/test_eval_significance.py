"""Intervals and paired tests against independent expectations: the binomial sampling distribution,
a MAPSSWE example worked by hand, the `sacrebleu` command line, Holm on known p-values, and the
limiting cases (identical systems, a system that fixes every error)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pytest

from speechmerge.evaluation.metrics import ops_counts, sentence_statistics
from speechmerge.evaluation.statistics import UtteranceStatistics


def wer_statistics(ops: list[str], speakers=None) -> UtteranceStatistics:
    counts = [ops_counts(o) for o in ops]
    return UtteranceStatistics(
        metric="wer",
        ids=[f"u{i}" for i in range(len(ops))],
        speakers=speakers or [None] * len(ops),
        stats=[[c.substitutions, c.deletions, c.insertions, c.reference_length] for c in counts],
        ops=ops,
    )


def text_statistics(metric: str, hypotheses: list[str], references: list[str]) -> UtteranceStatistics:
    return UtteranceStatistics(
        metric=metric,
        ids=[f"u{i}" for i in range(len(hypotheses))],
        speakers=[None] * len(hypotheses),
        stats=sentence_statistics(metric, hypotheses, references),
        hypotheses=hypotheses,
        references=references,
    )


def random_ops(rng, utterances: int, words: int, error_rate: float) -> list[str]:
    return ["".join("S" if e else "C" for e in rng.random(words) < error_rate) for _ in range(utterances)]


# --- bootstrap interval ----------------------------------------------------------------------


def test_wer_interval_width_matches_the_binomial_sampling_distribution():
    """n utterances of L words, each word wrong independently with probability q: corpus WER has
    standard deviation sqrt(q (1 - q) / (n L)); the bootstrap interval's width must match it."""
    from speechmerge.evaluation.bootstrap import bootstrap_scores, percentile_interval

    n, length, q, confidence = 400, 10, 0.2, 0.95
    stats = wer_statistics(random_ops(np.random.default_rng(7), n, length, q))
    interval = percentile_interval(bootstrap_scores("wer", stats.array, resamples=4000, seed=3), confidence)
    expected = 2 * NormalDist().inv_cdf(0.975) * math.sqrt(q * (1 - q) / (n * length))
    assert interval.high - interval.low == pytest.approx(expected, rel=0.15)
    assert interval.contains(stats.score())


def test_bootstrap_is_reproducible_with_a_seed():
    from speechmerge.evaluation.bootstrap import bootstrap_scores

    stats = wer_statistics(random_ops(np.random.default_rng(1), 50, 8, 0.3)).array
    assert np.array_equal(bootstrap_scores("wer", stats, seed=5), bootstrap_scores("wer", stats, seed=5))
    assert not np.array_equal(bootstrap_scores("wer", stats, seed=5), bootstrap_scores("wer", stats, seed=6))


def test_one_systems_bleu_resamples_are_sacrebleus_own():
    """Indices drawn as sacrebleu draws them: the mean and 95 % half-width its `--confidence`
    reports (sacrebleu.significance.estimate_ci) equal ours for the same seed."""
    from sacrebleu.metrics import BLEU

    from speechmerge.evaluation.bootstrap import bootstrap_scores
    from speechmerge.evaluation.significance import _sacrebleu_seed

    hypotheses, references = translation_pair(np.random.default_rng(4), 40, 0.3)
    ours = np.sort(bootstrap_scores("bleu", np.array(sentence_statistics("bleu", hypotheses, references)), seed=77))
    with _sacrebleu_seed(77):
        theirs = BLEU().corpus_score(hypotheses, [references], n_bootstrap=1000)
    low, high = ours[len(ours) // 40], ours[len(ours) - len(ours) // 40 - 1]
    assert ours.mean() == pytest.approx(theirs._mean, abs=1e-3)
    assert (high - low) / 2 == pytest.approx(theirs._ci, abs=1e-3)


def test_speaker_blocks_of_one_utterance_each_resample_like_utterances():
    from speechmerge.evaluation.bootstrap import bootstrap_scores, units

    stats = wer_statistics(random_ops(np.random.default_rng(2), 30, 6, 0.3)).array
    own = [f"s{i}" for i in range(30)]
    assert np.array_equal(bootstrap_scores("wer", stats, seed=1), bootstrap_scores("wer", stats, seed=1, blocks=own))
    summed = units(stats, ["a", "b", "a", None] + own[4:])
    assert summed.shape[0] == 29 and np.array_equal(summed[0], stats[0] + stats[2])


def test_a_group_of_one_utterance_has_no_interval():
    from speechmerge.errors import SpeechmergeError
    from speechmerge.evaluation.significance import compare_group

    one = wer_statistics(["CSC"])
    with pytest.raises(SpeechmergeError, match="es/transcribe: 1 utterance, no interval"):
        compare_group("es/transcribe", one, one)


# --- MAPSSWE ---------------------------------------------------------------------------------


def test_mapsswe_hand_worked():
    """Segments by hand (an event is a word either system got wrong, or a gap where either inserted;
    two events split when >= 2 words both got right lie between them):

    utt 1, 8 words. A: S at w1, D at w5. B: one insertion between w3 and w4.
        events w1 (A1 B0) | w2 w3 good: split | gap 4 (A0 B1), w4 good, w5 (A1 B0)  -> (1,0) (1,1)
    utt 2, 4 words. A right; B: S at w0, w1 -> one segment (0,2)
    utt 3, 5 words. both D at w0; A: S at w4; three good words between -> (1,1) (1,0)
    utt 4, both right -> no segment
    utt 5, 3 words. A: S at w0 and an insertion after w2; w1 w2 good between -> (1,0) (1,0)

    d = A - B = 1, 0, -2, 0, 1, 1, 1: n = 7, mean 2/7, sample variance (8 - 7 (2/7)^2)/6 = 26/21,
    Z = (2/7) / sqrt(26/21 / 7) = 2 sqrt(3/26), p = 2 (1 - Phi(Z))."""
    from speechmerge.evaluation.mapsswe import mapsswe

    a = ["CSCCCDCC", "CCCC", "DCCCS", "CCC", "SCCI"]
    b = ["CCCCICCCC", "SSCC", "DCCCC", "CCC", "CCC"]
    result = mapsswe(a, b)
    assert result.segments == [(1, 0), (1, 1), (0, 2), (1, 1), (1, 0), (1, 0), (1, 0)]
    assert result.mean == pytest.approx(2 / 7)
    assert result.sd == pytest.approx(math.sqrt(26 / 21))
    z = 2 * math.sqrt(3 / 26)
    assert result.z == pytest.approx(z)
    assert result.p_value == pytest.approx(2 * (1 - NormalDist().cdf(z)))


def test_mapsswe_refuses_alignments_of_different_references():
    from speechmerge.errors import SpeechmergeError
    from speechmerge.evaluation.mapsswe import mapsswe

    with pytest.raises(SpeechmergeError, match="same references"):
        mapsswe(["CCC"], ["CC"])


# --- sacrebleu's paired tests ----------------------------------------------------------------

WORDS = "the a cat dog sat ran on under mat rug house tree big small red blue".split()


def translation_pair(rng, sentences: int, noise: float) -> tuple[list[str], list[str]]:
    references = [" ".join(rng.choice(WORDS, size=rng.integers(5, 12))) for _ in range(sentences)]
    hypotheses = [
        " ".join(w if rng.random() > noise else str(rng.choice(WORDS)) for w in ref.split()) for ref in references
    ]
    return hypotheses, references


def sacrebleu_cli_p(tmp_path, references, baseline, system, metric: str, test: str, samples: int, seed: int) -> float:
    files = {}
    for name, lines in (("ref", references), ("a", baseline), ("b", system)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(files["ref"]), "-i", str(files["a"]), str(files["b"])]
        + ["-m", metric, f"--paired-{test}", f"--paired-{test}-n", str(samples), "-f", "text"],
        capture_output=True,
        text=True,
        check=True,
        env={"SACREBLEU_SEED": str(seed), "PATH": "/usr/bin:/bin"},
    )
    (p,) = re.findall(r"p = ([0-9.]+)", out.stdout)
    return float(p)


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
@pytest.mark.parametrize("test", ["bs", "ar"])
def test_bleu_paired_tests_equal_the_sacrebleu_command_line(tmp_path, metric, test):
    from speechmerge.evaluation.significance import sacrebleu_paired_p

    rng = np.random.default_rng(11)
    baseline, references = translation_pair(rng, 30, 0.35)
    # another system of about the same quality, its errors elsewhere: a p-value away from both ends
    system = [" ".join(w if rng.random() > 0.33 else str(rng.choice(WORDS)) for w in r.split()) for r in references]
    samples = 1000 if test == "bs" else 2000
    ours = sacrebleu_paired_p(metric, references, baseline, system, test, samples, seed=2024)
    theirs = sacrebleu_cli_p(tmp_path, references, baseline, system, metric, test, samples, seed=2024)
    assert 0.01 < theirs < 0.99
    assert round(ours, 4) == theirs  # the command line prints four decimals


# --- limiting cases --------------------------------------------------------------------------


def test_identical_systems_differ_by_nothing():
    from speechmerge.evaluation.significance import compare_group

    stats = wer_statistics(random_ops(np.random.default_rng(5), 60, 8, 0.25))
    result = compare_group("es/transcribe", stats, stats)
    assert result.paired.difference == 0 and result.paired.interval.contains(0.0)
    assert result.tests["paired bootstrap"] > 0.99 and result.tests["MAPSSWE"] == 1.0
    assert not result.significant and result.verdict().startswith("no significant difference")

    hypotheses, references = translation_pair(np.random.default_rng(6), 40, 0.3)
    same = text_statistics("bleu", hypotheses, references)
    result = compare_group("es/translate", same, same, ar_trials=1000)
    assert result.paired.difference == 0 and result.paired.interval.contains(0.0)
    assert result.tests["paired bootstrap"] > 0.99 and not result.significant


def test_a_system_that_fixes_every_error_is_significantly_better():
    from speechmerge.evaluation.significance import compare_group

    errors = random_ops(np.random.default_rng(8), 60, 8, 0.25)
    result = compare_group("es/transcribe", wer_statistics(errors), wer_statistics(["C" * 8] * 60))
    assert result.tests["paired bootstrap"] < 0.01 and result.tests["MAPSSWE"] < 0.01
    assert result.significant and result.b_is_better
    assert result.paired.probability_of_improvement == 1.0
    assert result.verdict("base", "merge").startswith("merge is better than base on es/transcribe: −")

    hypotheses, references = translation_pair(np.random.default_rng(9), 60, 0.3)
    result = compare_group(
        "es/translate",
        text_statistics("bleu", hypotheses, references),
        text_statistics("bleu", references, references),
        ar_trials=1000,
    )
    assert all(p < 0.01 for p in result.tests.values()) and result.b_is_better


def test_macro_average_is_the_mean_of_the_groups_with_a_stratified_interval():
    from speechmerge.evaluation.significance import compare_macro

    rng = np.random.default_rng(10)
    pairs = [
        (wer_statistics(random_ops(rng, 40, 8, 0.3)), wer_statistics(random_ops(rng, 40, 8, 0.1))),
        (wer_statistics(random_ops(rng, 30, 6, 0.2)), wer_statistics(random_ops(rng, 30, 6, 0.2))),
    ]
    result = compare_macro("macro test", pairs)
    assert result.score_a == pytest.approx(np.mean([a.score() for a, _ in pairs]))
    assert result.interval_a.contains(result.score_a) and result.interval_b.contains(result.score_b)
    same = compare_macro("macro test", [(a, a) for a, _ in pairs])
    assert same.paired.difference == 0 and same.primary_p > 0.99


# --- many comparisons, detectable differences ------------------------------------------------


def test_holm_on_known_p_values():
    from speechmerge.evaluation.significance import holm

    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])


def test_minimum_detectable_difference_is_the_normal_power_formula():
    from speechmerge.evaluation.significance import minimum_detectable_difference

    assert minimum_detectable_difference(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert minimum_detectable_difference(0.02, alpha=0.01, power=0.9) == pytest.approx(
        0.02 * (2.575829 + 1.281552), abs=1e-6
    )


def test_speaker_blocked_intervals_widen_when_speakers_differ():
    """20 speakers of 10 utterances, each speaker with its own error rate (0 to 60 %): utterances of
    one speaker are alike, so resampling speakers shows more spread than resampling utterances."""
    from speechmerge.evaluation.bootstrap import bootstrap_scores, percentile_interval

    rng = np.random.default_rng(12)
    ops, speakers = [], []
    for speaker in range(20):
        rate = rng.uniform(0.0, 0.6)
        ops += random_ops(rng, 10, 10, rate)
        speakers += [f"s{speaker}"] * 10
    stats = wer_statistics(ops, speakers)
    plain = percentile_interval(bootstrap_scores("wer", stats.array, 2000, seed=1), 0.95)
    blocked = percentile_interval(bootstrap_scores("wer", stats.array, 2000, seed=1, blocks=speakers), 0.95)
    assert blocked.high - blocked.low > 1.5 * (plain.high - plain.low)


def test_the_interval_level_is_the_one_asked_for():
    """A 50 % interval lies inside the 95 % one of the same resamples (percentiles 25-75 within 2.5-97.5)."""
    from pathlib import Path

    from speechmerge.data.manifest import Utterance
    from speechmerge.evaluation.prediction_cache import CachedDecode
    from speechmerge.evaluation.scoring import add_intervals, group_scores, macro_scores, score_prediction

    rng = np.random.default_rng(3)
    words = ["uno", "dos", "tres", "cuatro", "cinco", "seis"]
    predictions = []
    for index in range(30):
        reference = " ".join(rng.choice(words, 6))
        hypothesis = " ".join(w if rng.random() > 0.3 else "x" for w in reference.split())
        utterance = Utterance(id=f"u{index}", audio=Path(f"/a/{index}.wav"), text=reference, language="es")
        predictions.append(score_prediction(utterance, "m", CachedDecode(text=hypothesis, language="es"), False))
    intervals = {}
    for confidence in (0.5, 0.95):
        groups, _ = group_scores(predictions)
        add_intervals(groups, macro_scores(groups), predictions, confidence=confidence)
        intervals[confidence] = groups[0].intervals["wer"]
    (narrow_low, narrow_high), (wide_low, wide_high) = intervals[0.5], intervals[0.95]
    assert wide_low < narrow_low < groups[0].wer < narrow_high < wide_high


def test_a_confidence_outside_0_1_is_one_line(tmp_path, capsys):
    from conftest import run_cli

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    code, _, err = run_cli(["eval", "builtin:whisper-base", manifest, "--confidence", "1.5"], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--confidence" in lines[0], err
