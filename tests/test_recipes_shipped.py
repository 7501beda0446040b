"""Every study recipe in recipes/ passes the checks a study makes before any work: its schema,
its method grid against each method's declared parameters, and its claims against its models
and main-table columns (the data the recipes name is built by scripts/study_sets.py, not here)."""

from __future__ import annotations

from pathlib import Path

import pytest

RECIPES = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml") if "name:" in p.read_text()
)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_a_shipped_study_recipe_passes_the_checks_made_before_any_work(path):
    from speechmerge.study.claims import check_claims
    from speechmerge.study.recipe import load_study, method_grid

    recipe = load_study(path)
    grid = method_grid(recipe)
    assert grid
    check_claims(recipe.claims, list(grid), recipe.baselines.enabled, recipe.source)
