"""The study store: concurrent writers from several processes, and the validation choice."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

WRITERS, JOBS_EACH, GROUPS = 4, 25, 3


def _writer(path: str, writer: int) -> None:
    """One process recording its own jobs, each with a few scores, one short transaction at a time."""
    from speechmerge.study.store import Store

    store = Store(path)
    for index in range(JOBS_EACH):
        key = f"w{writer}-j{index}"
        store.add_jobs(
            [{"key": key, "kind": "validate", "name": key, "spec": {"writer": writer}, "setting": {"i": index}}]
        )
        store.start(key, "test")
        rows = [
            {
                "stage": "validation",
                "scope": "in_domain",
                "evaluation": f"set{g}",
                "language": "es",
                "task": "transcribe",
                "domain": f"d{g}",
                "metric": "wer",
                "value": writer + index / 100 + g / 1000,
                "utterances": 2,
            }
            for g in range(GROUPS)
        ]
        store.finish(key, {"model_hash": key}, rows, {"seconds": 0.1, "cpu_seconds": 0.1, "worker": str(writer)})
    store.close()


def test_several_processes_write_one_store_at_once_and_nothing_is_lost(tmp_path):
    from speechmerge.study.store import Store

    path = tmp_path / "study.sqlite"
    Store(path).close()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(path), w)) for w in range(WRITERS)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    store = Store(path)
    keys = [f"w{w}-j{i}" for w in range(WRITERS) for i in range(JOBS_EACH)]
    assert store.status(keys) == dict.fromkeys(keys, "done")
    assert len(store.executions()) == WRITERS * JOBS_EACH
    store.set_plan(keys)
    scores = store.scores()
    assert len(scores) == WRITERS * JOBS_EACH * GROUPS
    expected = {
        (f"w{w}-j{i}", f"d{g}"): w + i / 100 + g / 1000
        for w in range(WRITERS)
        for i in range(JOBS_EACH)
        for g in range(GROUPS)
    }
    assert {(s["job"], s["domain"]): s["value"] for s in scores} == pytest.approx(expected)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_file_that_is_not_a_store_is_refused_in_one_line(tmp_path):
    from speechmerge.errors import SpeechmergeError
    from speechmerge.study.store import Store

    bogus = tmp_path / "study.sqlite"
    bogus.write_text("not a database at all " * 100)
    with pytest.raises(SpeechmergeError, match="not a readable study store"):
        Store(bogus)
    with pytest.raises(SpeechmergeError, match="no study store here"):
        Store(tmp_path / "missing.sqlite", create=False)


def test_the_validation_choice_maximises_the_mean_normalised_score():
    """vs_expert = s(m)/s(e) with s = 1 - WER or BLEU (speechmerge.evaluation.relative_scores), by hand."""
    from speechmerge.study.selection import best_point

    asr, st = ("es.test", "es", "transcribe", "general", "wer"), ("es.test", "es", "translate", "general", "bleu")
    expert = {asr: 0.2, st: 30.0}
    base = {asr: 0.5, st: 10.0}
    candidates = [
        ("a", {"scale": 0.5}, {asr: 0.28, st: 24.0}),  # (0.72/0.8 + 24/30) / 2 = 0.85
        ("b", {"scale": 1.0}, {asr: 0.20, st: 20.0}),  # (1.0 + 2/3) / 2 = 0.833
        ("c", {"scale": 0.7}, {asr: 0.24, st: 25.5}),  # (0.95 + 0.85) / 2 = 0.90
    ]
    best = best_point(candidates, expert, base, "vs_expert")
    assert best["job"] == "c" and best["score"] == pytest.approx(0.90)
    assert best_point(candidates[:2], expert, base, "vs_expert")["job"] == "a"
    assert (
        best_point([candidates[2], ("d", {}, candidates[2][2])], expert, base, "vs_expert")["job"] == "c"
    )  # a tie keeps the first
    # gain kept = (s(m) - s(b)) / (s(e) - s(b)): a = (0.22/0.3 + 14/20)/2, c = (0.26/0.3 + 15.5/20)/2
    gains = best_point(candidates, expert, base, "gain_kept")
    assert gains["job"] == "c" and gains["score"] == pytest.approx((0.26 / 0.3 + 15.5 / 20) / 2)
    # an expert with WER 1 has no defined ratio: the raw score (1 - WER, BLEU / 100) decides
    useless = {asr: 1.0, st: 0.0}
    raw = best_point(candidates, useless, base, "vs_expert")
    assert raw["job"] == "c" and raw["score"] == pytest.approx((0.76 + 0.255) / 2) and "raw" in raw["criterion"]
    assert best_point([], expert, base, "vs_expert") is None
