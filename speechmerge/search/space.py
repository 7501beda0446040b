"""From an Optuna trial's values to a plain merge recipe, and checks of the space against the method."""

from __future__ import annotations

from speechmerge.errors import SpeechmergeError
from speechmerge.merging.registry import get_method
from speechmerge.recipe import MergeRecipe, OverrideSpec
from speechmerge.search.spec import Range, Space


def check_space(space: Space | None, recipe: MergeRecipe, where: str, grid: dict | None = None) -> None:
    """Every searched (and grid) parameter is one the method declares, as a number."""
    method = get_method(recipe.method, where=f"{where}: merge.method")
    declared = {p.name: p for p in method.params}
    searched = [f"space.params.{name}" for name in (space.params if space else {})]
    keys = searched + [f"grid.{name}" for name in grid or {}]
    for key in keys:
        name = key.rsplit(".", 1)[1]
        if name not in declared:
            raise SpeechmergeError(
                f"{where}: {key}: method {method.name} has no parameter {name!r} "
                f"(it has: {', '.join(declared) or 'none'})"
            )
        if declared[name].type not in (float, int):
            raise SpeechmergeError(f"{where}: {key}: only numeric parameters can be searched")


def _suggest(trial, name: str, bounds: Range, kind=float):
    if kind is int:
        return trial.suggest_int(name, int(bounds.low), int(bounds.high), log=bounds.log)
    return trial.suggest_float(name, bounds.low, bounds.high, log=bounds.log)


def trial_recipe(trial, space: Space, recipe: MergeRecipe) -> MergeRecipe:
    """The merge recipe of one trial: `recipe` with the trial's weights, group overrides and params."""
    method = get_method(recipe.method)
    kinds = {p.name: p.type for p in method.params}
    experts = [e.model_dump() for e in recipe.experts]
    labels = [recipe.expert_label(i) for i in range(len(experts))]
    if space.weights is not None:
        for expert, label in zip(experts, labels):
            expert["weight"] = _suggest(trial, f"weight.{label}", space.weights)
    if space.gradient is not None:
        for expert, label in zip(experts, labels):
            expert["weight"] = [
                _suggest(trial, f"gradient.{label}.{k}", space.gradient) for k in range(space.gradient.points)
            ]
    overrides = list(recipe.overrides)
    for group, bounds in space.groups.items():
        scale = _suggest(trial, f"group.{group}", bounds)
        constants = [e["weight"] if not isinstance(e["weight"], list) else None for e in experts]
        if any(c is None for c in constants):
            raise SpeechmergeError(f"{recipe.source}: space.groups needs constant expert weights (not a gradient)")
        overrides.append(OverrideSpec(match=bounds.match, weights=[scale * c for c in constants]))
    params = dict(recipe.params)
    for name, bounds in space.params.items():
        params[name] = _suggest(trial, f"param.{name}", bounds, kinds[name])
    return recipe.updated(experts=experts, params=params, overrides=[o.model_dump() for o in overrides])
