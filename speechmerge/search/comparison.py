"""The baseline a searched or learned recipe must beat: the method's best grid setting.

The grid (`grid: {scale: [0.3, 0.5, 1.0]}`, every combination of the listed values; without one,
the recipe's own setting) is scored on validation with the same objective as the trials, and
its best point is the baseline. On the test data both models are decoded with the default
decoding options and compared group by group and by macro average (`speechmerge.evaluation.compare`):
each score with its interval, the difference with its interval and the paired tests' p-values
(`speechmerge.evaluation.significance`), so that an overfit to validation shows on test.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.recipe import MergeRecipe


def grid_recipes(recipe: MergeRecipe, grid: dict[str, list[float]]) -> list[MergeRecipe]:
    """`recipe` at every combination of the grid's values (just `recipe` for an empty grid)."""
    names = list(grid)
    return [
        recipe.updated(params={**recipe.params, **dict(zip(names, values))})
        for values in itertools.product(*(grid[n] for n in names))
    ]


def best_grid_point(recipe: MergeRecipe, grid: dict, merger, objective) -> tuple[MergeRecipe, float, list[dict]]:
    """The grid point with the best validation objective (ties: the first), its value, and every point's."""
    scored = []
    for point in grid_recipes(recipe, grid):
        value = objective.value(objective.decode(merger.merge(point), objective.clips))
        scored.append((point, value))
    best, value = max(scored, key=lambda item: item[1])
    return best, value, [{"params": p.params, "value": v} for p, v in scored]


def first_utterances(manifests: Sequence[str], count: int | None) -> list:
    """Data sources for `load_data` / `evaluate`: the manifests, or the first `count` utterances of each."""
    from speechmerge.data.manifest import read_manifest

    if count is None:
        return list(manifests)
    return [read_manifest(Path(m))[:count] for m in manifests]


def check_disjoint(validation: Sequence, test: Sequence, where: str) -> None:
    """Refuse validation data that shares an utterance (id or audio file) with the test data."""
    test_ids = {u.id for _, u in test}
    test_audio = {str(Path(u.audio).resolve()) for _, u in test}
    for name, utterance in validation:
        if utterance.id in test_ids or str(Path(utterance.audio).resolve()) in test_audio:
            raise SpeechmergeError(
                f"{where}: validation: {name}: utterance {utterance.id!r} is also in the test data; "
                "searching on test clips overfits the test score — give disjoint validation and test sets"
            )


def compare_on_test(baseline: MergeRecipe, chosen: MergeRecipe, test: Sequence, out: Path):
    """Merge both recipes into OUT/baseline-model and OUT/model, decode the test data with each and
    compare (B = chosen against A = baseline); writes test-comparison.md and .json."""
    from speechmerge.evaluation.compare import as_json, compare_evaluations, evaluate_model, markdown
    from speechmerge.merging.api import merge

    if not test:
        return None
    merge(baseline.updated(output=str(out / "baseline-model")), force=True, show_progress=False)
    if not (out / "model").is_dir():
        merge(chosen.updated(output=str(out / "model")), force=True, show_progress=False)
    a = evaluate_model(str(out / "baseline-model"), list(test))
    b = evaluate_model(str(out / "model"), list(test))
    result = compare_evaluations(a, b)
    (out / "test-comparison.md").write_text(markdown(result))
    (out / "test-comparison.json").write_text(as_json(result))
    return result


def write_grid(out: Path, points: list[dict], best: MergeRecipe, value: float) -> None:
    (out / "grid.json").write_text(json.dumps({"best": best.params, "value": value, "points": points}, indent=2))
