"""Normalised performance on numbers worked out by hand from the formulas in docs/evaluation.md."""

from __future__ import annotations

import math

import pytest

from speechmerge.evaluation.relative_scores import gain_kept, normalised_performance, vs_expert


def test_error_rate_normalisations_by_hand():
    # base WER 0.40, expert 0.20, merged 0.25: accuracy 0.75 / 0.80; gain kept (0.40-0.25)/(0.40-0.20)
    assert vs_expert("wer", 0.25, 0.20) == pytest.approx(0.75 / 0.80)
    assert gain_kept("wer", 0.25, 0.20, 0.40) == pytest.approx(0.75)
    # as good as the expert / as bad as the base / worse than the base
    assert gain_kept("wer", 0.20, 0.20, 0.40) == pytest.approx(1.0)
    assert gain_kept("wer", 0.40, 0.20, 0.40) == pytest.approx(0.0)
    assert gain_kept("cer", 0.50, 0.20, 0.40) == pytest.approx(-0.5)


def test_bleu_normalisations_by_hand():
    # base 10, expert 30, merged 24: 24/30 = 0.8; (24-10)/(30-10) = 0.7
    assert vs_expert("bleu", 24.0, 30.0) == pytest.approx(0.8)
    assert gain_kept("bleu", 24.0, 30.0, 10.0) == pytest.approx(0.7)
    assert gain_kept("chrf", 35.0, 30.0, 10.0) == pytest.approx(1.25)


def test_undefined_cases_are_nan():
    assert math.isnan(gain_kept("wer", 0.3, 0.5, 0.4))  # the expert is worse than the base
    assert math.isnan(gain_kept("bleu", 12.0, 10.0, 10.0))  # no gain to keep
    assert math.isnan(vs_expert("wer", 0.3, 1.2))  # expert accuracy 1 - 1.2 < 0
    with pytest.raises(ValueError, match="unknown metric"):
        vs_expert("accuracy", 0.1, 0.2)


def test_mean_over_tasks_leaves_undefined_tasks_out():
    merged = {"es/transcribe": 0.25, "de/transcribe": 0.30, "fr/transcribe": 0.50}
    experts = {"es/transcribe": 0.20, "de/transcribe": 0.20, "fr/transcribe": 0.60}
    base = {"es/transcribe": 0.40, "de/transcribe": 0.50, "fr/transcribe": 0.55}
    result = normalised_performance("wer", merged, experts, base)
    # gain kept: es 0.75, de (0.5-0.3)/(0.5-0.2) = 2/3, fr undefined (expert worse than base)
    assert result.mean_gain_kept == pytest.approx((0.75 + 2 / 3) / 2)
    assert result.undefined == {"vs_expert": 0, "gain_kept": 1}
    assert result.mean_vs_expert == pytest.approx((0.75 / 0.8 + 0.7 / 0.8 + 0.5 / 0.4) / 3)


def test_each_task_is_measured_against_its_own_expert():
    base = {"es": 10.0, "de": 20.0}
    experts = {"es": 30.0, "de": 40.0}  # BLEU of expert-es on es and of expert-de on de
    merged = normalised_performance("bleu", {"es": 25.0, "de": 35.0}, experts, base)
    assert merged.mean_gain_kept == pytest.approx(((25 - 10) / 20 + (35 - 20) / 20) / 2)
    assert merged.mean_vs_expert == pytest.approx((25 / 30 + 35 / 40) / 2)
    expert_es = normalised_performance("bleu", {"es": 30.0, "de": 18.0}, experts, base)
    assert [t.gain_kept for t in expert_es.tasks] == pytest.approx([-0.1, 1.0])  # de, es (sorted)
    assert normalised_performance("bleu", base, experts, base).mean_gain_kept == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no expert or base score"):
        normalised_performance("bleu", {"it": 1.0}, {"es": 2.0}, {"es": 1.0})
