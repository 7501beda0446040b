"""The public entry points: a searched or learned recipe from a spec, with its scores.

    outcome = run_search(spec, recipe)        # spec: SearchRecipe, recipe: its merge recipe
    outcome.best_recipe, outcome.validation_score, outcome.baseline_recipe, outcome.test

Both write their outputs under the spec's `output` folder (see docs/search.md) and return an
`Outcome`; a study's `search:` and `adamerging:` entries call them with specs they build.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

from speechmerge.recipe import MergeRecipe
from speechmerge.search.spec import AdaMergingRecipe, SearchRecipe


@dataclass
class Outcome:
    """A searched or learned recipe, its validation score and the comparison on test."""

    best_recipe: MergeRecipe
    validation_score: Optional[float]  # the objective (search) on validation; None for AdaMerging
    baseline_recipe: MergeRecipe  # the method's best grid point on validation
    baseline_score: Optional[float]
    output: Path
    seconds: float
    trials: list[dict] = field(default_factory=list)
    test: Any = None  # speechmerge.evaluation.compare.CompareResult, or None without test data
    details: dict = field(default_factory=dict)


def whisper_objective(
    recipe: MergeRecipe, validation: list, objective: str, select_by: str, include: str | None, window: str = "full"
):
    """The validation objective (picklable through `functools.partial`)."""
    from speechmerge.checkpoints.resolve import resolve_model_dir
    from speechmerge.search.objective import WhisperObjective

    model_dir = resolve_model_dir(recipe.base or recipe.experts[0].path)
    encoder_shared = include is not None and "encoder" not in include
    return WhisperObjective(
        model_dir, validation, objective, select_by, encoder_shared=encoder_shared, encoder_window=window
    )


def scored_objective(
    recipe: MergeRecipe, validation: list, merger, objective: str, select_by: str, include, window: str = "full"
):
    """The validation objective with its references (base and experts) scored."""
    scorer = whisper_objective(recipe, validation, objective, select_by, include, window)
    base = {n: merger.base[n] if merger.base[n] is not None else merger.stacks[n][0] for n in merger.names}
    scorer.score_references(base, [e.path for e in recipe.experts], expert_states(merger, recipe))
    return scorer


def expert_states(merger, recipe: MergeRecipe):
    """index -> the expert's own tensors for the merger's names (θ_0 + τ_t)."""
    from speechmerge.checkpoints.resolve import open_checkpoint

    def state(index: int) -> dict:
        checkpoint = open_checkpoint(recipe.experts[index].path)
        return {name: checkpoint.get(name) for name in merger.names}

    return state


def checked_data(spec, recipe: MergeRecipe, space) -> tuple[list, list]:
    """Refuse a bad space or grid and validation data that overlaps the test data (one line naming
    the recipe); return the loaded validation clips and the test manifests (first N of each)."""
    from speechmerge.evaluation.api import load_data
    from speechmerge.search.comparison import check_disjoint, first_utterances
    from speechmerge.search.space import check_space

    where = recipe.source.removesuffix(": merge")
    check_space(space, recipe, where=where, grid=spec.grid)
    validation = load_data(first_utterances(spec.validation, spec.validation_utterances)) if spec.validation else []
    test_data = first_utterances(spec.test, spec.test_utterances)
    if validation and spec.test:
        check_disjoint(validation, load_data(test_data), where)
    return validation, test_data


def run_search(spec: SearchRecipe, recipe: MergeRecipe, progress: bool = True) -> Outcome:
    """`speechmerge search`: refuse overlapping data, score the references and the grid, search,
    merge the best recipe, compare it with the best grid point on test; see `speechmerge.search`."""
    from speechmerge.merging.api import merge
    from speechmerge.merging.memory import MemoryMerger
    from speechmerge.search.comparison import (
        best_grid_point,
        compare_on_test,
        write_grid,
    )
    from speechmerge.search.run import search

    started = time.monotonic()
    validation, test_data = checked_data(spec, recipe, spec.space)
    merger = MemoryMerger(recipe, include=spec.include)
    arguments = (recipe, validation, spec.objective, spec.select_by, spec.include, spec.encoder_window)
    objective = scored_objective(*arguments[:2], merger, *arguments[2:])
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    baseline, baseline_value, points = best_grid_point(recipe, spec.grid, merger, objective)
    write_grid(out, points, baseline, baseline_value)
    factory = partial(whisper_objective, *arguments) if spec.workers > 1 else None
    result = search(spec, recipe, objective, merger=merger, make_objective=factory)
    merge(result.best_recipe, out / "model", force=True, show_progress=progress)
    plot_history(result, out / "history.png")
    test = compare_on_test(merger.disk_recipe(baseline), result.best_recipe, test_data, out)
    return Outcome(
        result.best_recipe,
        result.best_value,
        merger.disk_recipe(baseline),
        baseline_value,
        out,
        time.monotonic() - started,
        result.trials,
        test,
    )


def plot_history(result, path: Path) -> None:
    """Objective over trials (and the running best); each expert's weight over decoder depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechmerge.checkpoints.whisper import TensorRole
    from speechmerge.merging.coefficients import depth_position, interpolate

    done = [t for t in result.trials if t["state"] == "COMPLETE"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    numbers, values = [t["number"] for t in done], [t["value"] for t in done]
    left.plot(numbers, values, "o", label="trial")
    left.plot(numbers, [max(values[: i + 1]) for i in range(len(values))], "-", label="best so far")
    left.set(xlabel="trial", ylabel="objective (higher is better)", title="search history")
    left.legend()
    layers = 12
    for index, expert in enumerate(result.best_recipe.experts):
        weights = expert.weight if isinstance(expert.weight, list) else [expert.weight]
        depth = [
            interpolate(weights, depth_position(TensorRole("", "mlp", "decoder", i), layers)) for i in range(layers)
        ]
        right.plot([i / (layers - 1) for i in range(layers)], depth, label=result.best_recipe.expert_label(index))
    right.set(xlabel="relative depth (first block 0, last block 1)", ylabel="weight", title="best weights per expert")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_adamerging(spec: AdaMergingRecipe, recipe: MergeRecipe, progress: bool = True) -> Outcome:
    """`speechmerge adamerge`: learn λ on the unlabelled data, write them as a recipe and its model,
    and (with `validation` and `test`) compare it with the method's best grid point on test."""
    import json

    from speechmerge.checkpoints.resolve import resolve_model_dir
    from speechmerge.evaluation.api import load_data
    from speechmerge.merging.api import merge
    from speechmerge.merging.memory import MemoryMerger, keep_base_outside
    from speechmerge.search.adamerging import DECODER, AdaMerging
    from speechmerge.search.comparison import (
        best_grid_point,
        compare_on_test,
        first_utterances,
        write_grid,
    )

    started = time.monotonic()
    validation, test_data = checked_data(spec, recipe, None)
    clips = [u for _, u in load_data(first_utterances(spec.data, spec.data_utterances))]
    ada = AdaMerging(
        recipe,
        resolve_model_dir(recipe.base),
        clips,
        variant=spec.variant,
        vectors=spec.vectors,
        density=spec.density,
        granularity=spec.granularity,
        init=spec.init,
        lr=spec.lr,
        batch_size=spec.batch_size,
        refresh=spec.refresh,
        encoder_window=spec.encoder_window,
    )
    before = ada.mean_entropy()
    result = ada.fit(spec.steps, seed=spec.seed, timeout=spec.timeout)
    after = ada.mean_entropy()
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    experts = ada.write_pruned_experts(out / "pruned") if spec.vectors == "ties" else None
    learned = ada.as_recipe(experts).updated(output=str(out / "model"))
    write_recipe(learned, out / "recipe.yaml")
    merge(learned, out / "model", force=True, show_progress=progress)
    details = {
        "steps": len(result.entropies),
        "fit_seconds": result.seconds,
        "entropy_before": before,
        "entropy_after": after,
        "entropies": result.entropies,
        "coefficients": result.coefficients,
    }
    (out / "history.json").write_text(json.dumps(details, indent=2) + "\n")
    plot_adamerging(details, [recipe.expert_label(i) for i in range(len(recipe.experts))], out / "history.png")
    baseline, baseline_value = keep_base_outside(recipe, DECODER), None
    if validation:
        merger = MemoryMerger(recipe, include=DECODER)
        objective = scored_objective(
            recipe, validation, merger, "primary", spec.select_by, DECODER, spec.encoder_window
        )
        baseline, baseline_value, points = best_grid_point(recipe, spec.grid, merger, objective)
        write_grid(out, points, baseline, baseline_value)
        baseline = merger.disk_recipe(baseline)
        details["learned_validation_score"] = objective.value(
            objective.decode(MemoryMerger(learned, include=DECODER).merge(), objective.clips)
        )
    test = compare_on_test(baseline, learned, test_data, out)
    return Outcome(learned, None, baseline, baseline_value, out, time.monotonic() - started, [], test, details)


def write_recipe(recipe: MergeRecipe, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))


def plot_adamerging(details: dict, experts: list[str], path: Path) -> None:
    """Entropy per step; the learned λ of each expert per layer group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(range(1, len(details["entropies"]) + 1), details["entropies"])
    left.set(xlabel="step", ylabel="entropy (sum over groups)", title="AdaMerging")
    groups = list(details["coefficients"])
    for index, expert in enumerate(experts):
        right.plot(range(len(groups)), [details["coefficients"][g][index] for g in groups], "o-", label=expert)
    right.set_xticks(range(len(groups)), groups, rotation=60, fontsize=7)
    right.set(ylabel="λ", title="learned coefficients per layer group")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
