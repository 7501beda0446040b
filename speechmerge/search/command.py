"""`speechmerge search RECIPE`: search, write the best recipe, its merged model, the trial history
and its plot, and — with test data — the test comparison of the best model against the start
recipe's (the method's default or grid setting), with intervals and paired tests."""

from __future__ import annotations

from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.search.run import SearchResult, search
from speechmerge.search.spec import SearchRecipe, load_search


def check_disjoint(validation: list, test: list, where: str) -> None:
    """Refuse validation data that shares an utterance (id or audio file) with the test data."""
    test_ids = {u.id for _, u in test}
    test_audio = {str(u.audio) for _, u in test}
    for name, utterance in validation:
        if utterance.id in test_ids or str(utterance.audio) in test_audio:
            raise SpeechmergeError(
                f"{where}: validation: {name}: utterance {utterance.id!r} is also in the test data; "
                "searching on test clips overfits the test score — give disjoint validation and test sets"
            )


def plot_history(result: SearchResult, recipe, path: Path) -> None:
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


def run_search_file(path: Path, progress: bool = True) -> SearchResult:
    """The whole `speechmerge search` command."""
    from speechmerge.checkpoints.resolve import resolve_model_dir
    from speechmerge.evaluation.api import load_data
    from speechmerge.merging.api import merge
    from speechmerge.search.objective import WhisperObjective

    spec, recipe = load_search(path)
    validation = load_data(spec.validation)
    if spec.test:
        check_disjoint(validation, load_data(spec.test), str(path))
    model_dir = resolve_model_dir(recipe.base or recipe.experts[0].path)
    encoder_shared = spec.include is not None and "encoder" not in spec.include
    objective = WhisperObjective(model_dir, validation, spec.objective, encoder_shared=encoder_shared)
    result = search(spec, recipe, objective)
    out = Path(spec.output)
    merge(result.best_recipe, out / "model", force=True, show_progress=progress)
    plot_history(result, recipe, out / "history.png")
    if spec.test:
        _test_comparison(spec, recipe, result, out)
    return result


def _test_comparison(spec: SearchRecipe, recipe, result: SearchResult, out: Path) -> None:
    """The best model against the start recipe's on the test data (intervals, paired tests)."""
    from speechmerge.evaluation.compare import compare_evaluations, evaluate_model, markdown
    from speechmerge.merging.api import merge
    from speechmerge.merging.memory import keep_base_outside

    start_recipe = keep_base_outside(recipe, spec.include)
    merge(start_recipe, out / "start-model", force=True, show_progress=False)
    a = evaluate_model(str(out / "start-model"), [Path(p) for p in spec.test])
    b = evaluate_model(str(out / "model"), [Path(p) for p in spec.test])
    (out / "test-comparison.md").write_text(markdown(compare_evaluations(a, b)))


def search_command(path: Path) -> None:
    result = run_search_file(path)
    print(f"best objective {result.best_value:.4f} over {len(result.trials)} trials; recipe {result.recipe_path}")
