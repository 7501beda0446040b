"""Per-utterance statistics: word alignments, sacrebleu sentence statistics, and where they are kept
(predictions, the study store) so that every significance test runs without decoding again."""

from __future__ import annotations

import numpy as np
import pytest


def test_word_alignment_hand_worked():
    from speechmerge.evaluation.metrics import ops_counts, word_alignment

    # ref: the cat sat on the mat / hyp: the cat sat in the big mat
    assert word_alignment("the cat sat on the mat", "the cat sat in the big mat") == "CCCSCIC"
    assert word_alignment("a b c", "a c") == "CDC"
    assert word_alignment("", "x y") == "II"
    counts = ops_counts("CCCSCIC")
    assert (counts.substitutions, counts.deletions, counts.insertions, counts.reference_length) == (1, 0, 1, 6)


@pytest.mark.parametrize(
    "reference, hypothesis",
    [("a b c d e", "a x c e f"), ("one two three", "one three four five"), ("x", ""), ("a a a", "a a a")],
)
def test_op_string_counts_equal_jiwer(reference, hypothesis):
    import jiwer

    from speechmerge.evaluation.metrics import ops_counts, word_alignment

    out = jiwer.process_words(reference, hypothesis)
    counts = ops_counts(word_alignment(reference, hypothesis))
    assert (counts.substitutions, counts.deletions, counts.insertions) == (
        out.substitutions,
        out.deletions,
        out.insertions,
    )
    assert counts.reference_length == len(reference.split())


HYPOTHESES = ["the cat sat on a mat", "hello there world", "it is raining today", "no"]
REFERENCES = ["the cat sat on the mat", "hello world", "it rains today", "no way"]


@pytest.mark.parametrize("name", ["bleu", "chrf"])
def test_summed_sentence_statistics_give_sacrebleus_corpus_score(name):
    from sacrebleu.metrics import BLEU, CHRF

    from speechmerge.evaluation.metrics import score_from_statistics, sentence_statistics

    stats = np.array(sentence_statistics(name, HYPOTHESES, REFERENCES))
    assert stats.shape[0] == len(HYPOTHESES)
    expected = (BLEU() if name == "bleu" else CHRF()).corpus_score(HYPOTHESES, [REFERENCES]).score
    assert score_from_statistics(name, stats.sum(axis=0)) == pytest.approx(expected, abs=1e-9)


def _utterance(task: str, text: str, translation: str | None = None, index: int = 0):
    from speechmerge.data.manifest import Utterance

    return Utterance(
        id=f"u{index}",
        audio="/tmp/none.wav",
        text=text,
        translation=translation,
        language="es",
        task=task,
        speaker=f"s{index % 2}",
    )


def test_predictions_carry_alignments_and_sentence_statistics():
    from speechmerge.evaluation.metrics import sentence_statistics
    from speechmerge.evaluation.prediction_cache import CachedDecode
    from speechmerge.evaluation.scoring import score_prediction
    from speechmerge.evaluation.statistics import group_statistics

    spoken = score_prediction(
        _utterance("transcribe", "Hola, mundo."), "m", CachedDecode(text="hola gran mundo", language="es"), False
    )
    assert spoken.word_ops == "CIC" and spoken.word_edits.insertions == 1 and spoken.bleu_stats is None
    translated = score_prediction(
        _utterance("translate", "hola", "hello world"),
        "m",
        CachedDecode(text="hello there world", language="es"),
        False,
    )
    assert translated.bleu_stats == sentence_statistics("bleu", ["hello there world"], ["hello world"])[0]
    assert translated.word_ops is None
    # the JSON line round-trips everything a test needs
    again = type(spoken).model_validate_json(spoken.model_dump_json())
    stats = group_statistics([again], "wer")
    assert stats.ops == ["CIC"] and stats.stats == [[0, 0, 1, 2]] and stats.speakers == ["s0"]
    assert stats.score() == pytest.approx(0.5)
    assert group_statistics([again], "bleu") is None


def test_the_study_store_keeps_each_rows_statistics(tmp_path):
    from speechmerge.study.scores import score_rows
    from speechmerge.study.store import Store

    store = Store(tmp_path / "study.sqlite")
    store.add_jobs([{"key": "j", "kind": "evaluate", "name": "base", "spec": {}, "model_kind": "base", "model": "b"}])
    store.set_plan(["j"])
    statistics = {"metric": "wer", "ids": ["a", "b"], "speakers": [None, None], "stats": [[1, 0, 0, 3], [0, 0, 0, 2]]}
    row = dict(
        stage="test", scope="in_domain", evaluation="set", language="es", task="transcribe", domain="-", utterances=2
    )
    store.finish(
        "j",
        {},
        [{**row, "metric": "wer", "value": 0.2, "statistics": statistics}, {**row, "metric": "cer", "value": 0.1}],
        {"seconds": 0.1, "cpu_seconds": 0.1},
    )
    rows = {r.metric: r for r in score_rows(store)}
    assert rows["wer"].statistics == statistics and rows["cer"].statistics is None
    store.close()


def test_statistics_of_two_evaluations_pair_up_by_id_and_name_the_ids_that_differ():
    from speechmerge.errors import SpeechmergeError
    from speechmerge.evaluation.statistics import UtteranceStatistics, pair_up

    a = UtteranceStatistics(metric="wer", ids=["x", "y"], speakers=[None, None], stats=[[1, 0, 0, 2], [0, 0, 0, 3]])
    b = UtteranceStatistics(metric="wer", ids=["y", "x"], speakers=[None, None], stats=[[0, 0, 0, 3], [0, 1, 0, 2]])
    assert pair_up(a, b, "es").stats == [[0, 1, 0, 2], [0, 0, 0, 3]]
    c = b.model_copy(update={"ids": ["y", "z"]})
    with pytest.raises(SpeechmergeError, match="'x' only in A, 'z' only in B"):
        pair_up(a, c, "es/transcribe")


def _transcribed(count: int, error_rate: float, seed: int, language: str = "es"):
    from speechmerge.evaluation.prediction_cache import CachedDecode
    from speechmerge.evaluation.scoring import score_prediction

    rng = np.random.default_rng(seed)
    words = "uno dos tres cuatro cinco seis siete ocho nueve diez".split()
    out = []
    for index in range(count):
        reference = " ".join(rng.choice(words, size=10))
        hypothesis = " ".join(w if rng.random() > error_rate else "mal" for w in reference.split())
        utterance = _utterance("transcribe", reference, index=index).model_copy(
            update={"id": f"{language}-{index}", "language": language, "split": "test"}
        )
        out.append(score_prediction(utterance, "m", CachedDecode(text=hypothesis, language=language), False))
    return out


def test_eval_scores_carry_intervals_and_the_macro_average_a_stratified_one():
    """Two independent groups of equal size and error rate: each group's interval contains its WER,
    and the macro interval is about 1/sqrt(2) as wide (the variance of a mean of two)."""
    from speechmerge.evaluation.scoring import add_intervals, group_scores, macro_scores

    predictions = _transcribed(300, 0.2, seed=1, language="es") + _transcribed(300, 0.2, seed=2, language="fr")
    predictions += _transcribed(1, 0.2, seed=3, language="de")
    groups, _ = group_scores(predictions)
    two = [g for g in groups if g.language != "de"]
    macro = macro_scores(two)
    add_intervals(two, macro, predictions, resamples=2000)
    by_language = {g.language: g for g in groups}
    widths = []
    for language in ("es", "fr"):
        low, high = by_language[language].intervals["wer"]
        assert low <= by_language[language].wer <= high
        widths.append(high - low)
    low, high = macro[0].intervals["wer"]
    assert low <= macro[0].wer <= high
    assert high - low == pytest.approx(np.hypot(*widths) / 2, rel=0.15)
    # de (one utterance) has no interval, so neither has a macro average over it
    everything = macro_scores(groups)
    add_intervals(groups, everything, predictions, resamples=200)
    assert "wer" not in by_language["de"].intervals and "wer" not in everything[0].intervals
