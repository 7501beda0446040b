"""The search loop: Optuna proposes a merge recipe, the in-memory merger builds its tensors, the
objective decodes validation clips with them and scores them; nothing is written per trial.

The study lives in SQLite (`OUTPUT/search.db`), so a killed search resumes: finished trials
(complete or pruned) count against the trial budget and are not repeated. With pruning, a trial
first decodes `first_clips` clips, reports their score and stops when Optuna's median pruner
says it is worse than the median of earlier trials at that step; otherwise it decodes the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from speechmerge.merging.memory import MemoryMerger
from speechmerge.recipe import MergeRecipe
from speechmerge.search.space import check_space, trial_recipe
from speechmerge.search.spec import SearchRecipe

FINISHED = ("COMPLETE", "PRUNED")


class Objective(Protocol):
    """Decodes clips with merged tensors and scores what was decoded (higher is better)."""

    clips: Sequence[Any]

    def decode(self, state: dict[str, torch.Tensor], clips: Sequence[Any]) -> list[Any]: ...

    def value(self, decoded: list[Any]) -> float: ...


@dataclass
class SearchResult:
    best_recipe: MergeRecipe
    best_value: float
    trials: list[dict]
    recipe_path: Path


def _sampler(spec: SearchRecipe):
    import optuna

    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def open_study(spec: SearchRecipe):
    """The Optuna study in OUTPUT/search.db, created or resumed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    Path(spec.output).mkdir(parents=True, exist_ok=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if spec.pruning else optuna.pruners.NopPruner()
    return optuna.create_study(
        study_name="search",
        storage=f"sqlite:///{Path(spec.output) / 'search.db'}",
        sampler=_sampler(spec),
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def finished_trials(study) -> list:
    return [t for t in study.trials if t.state.name in FINISHED]


def trial_objective(spec: SearchRecipe, recipe: MergeRecipe, merger: MemoryMerger, objective: Objective):
    """Optuna's objective: merge in memory, decode (first slice, maybe pruned, then the rest), score."""
    import optuna

    def run(trial) -> float:
        state = merger.merge(trial_recipe(trial, spec.space, recipe))
        clips = list(objective.clips)
        first = spec.pruning.first_clips if spec.pruning else len(clips)
        decoded = objective.decode(state, clips[:first])
        trial.set_user_attr("decoded_clips", len(decoded))
        if first < len(clips):
            trial.report(objective.value(decoded), step=0)
            if trial.should_prune():
                raise optuna.TrialPruned()
            decoded += objective.decode(state, clips[first:])
            trial.set_user_attr("decoded_clips", len(decoded))
        return objective.value(decoded)

    return run


def history(study) -> list[dict]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "decoded_clips": t.user_attrs.get("decoded_clips"),
            "seconds": t.duration.total_seconds() if t.duration else None,
        }
        for t in study.trials
    ]


def best_recipe(spec: SearchRecipe, recipe: MergeRecipe, merger: MemoryMerger, params: dict) -> MergeRecipe:
    """The plain merge recipe that reproduces the trial with `params` (`keep: base` outside `include`)."""
    import optuna

    chosen = trial_recipe(optuna.trial.FixedTrial(params), spec.space, recipe)
    return merger.disk_recipe(chosen).updated(output=str(Path(spec.output) / "model"))


def search(spec: SearchRecipe, recipe: MergeRecipe, objective: Objective) -> SearchResult:
    """Run (or resume) the search; write the best recipe and the trial history to OUTPUT."""
    check_space(spec.space, recipe, where=recipe.source.removesuffix(": merge"))
    merger = MemoryMerger(recipe, include=spec.include)
    study = open_study(spec)
    remaining = spec.trials - len(finished_trials(study))
    if remaining > 0:
        study.optimize(trial_objective(spec, recipe, merger, objective), n_trials=remaining, timeout=spec.timeout)
    best = study.best_trial
    chosen = best_recipe(spec, recipe, merger, best.params)
    out = Path(spec.output)
    recipe_path = out / "best.yaml"
    recipe_path.write_text(yaml.safe_dump(chosen.model_dump(mode="json", exclude_none=True), sort_keys=False))
    trials = history(study)
    (out / "trials.json").write_text(json.dumps(trials, indent=2) + "\n")
    return SearchResult(chosen, best.value, trials, recipe_path)
