"""`speechmerge search RECIPE` and `speechmerge adamerge RECIPE`: read the spec, run, print one line each."""

from __future__ import annotations

from pathlib import Path


def macro_lines(outcome) -> list[str]:
    """One verdict line per macro average of the test comparison (none without test data)."""
    if outcome.test is None:
        return []
    return [c.verdict("best grid point", "searched") for c in outcome.test.macro or outcome.test.groups]


def search_command(path: Path) -> None:
    from speechmerge.search.api import run_search
    from speechmerge.search.spec import load_search

    outcome = run_search(*load_search(path))
    done = sum(t["state"] == "COMPLETE" for t in outcome.trials)
    print(
        f"best objective {outcome.validation_score:.4f} over {len(outcome.trials)} trials ({done} complete) in "
        f"{outcome.seconds:.0f} s; best grid point {outcome.baseline_score:.4f}; recipe {outcome.output / 'best.yaml'}"
    )
    for line in macro_lines(outcome):
        print(line)


def adamerge_command(path: Path) -> None:
    from speechmerge.search.api import run_adamerging
    from speechmerge.search.spec import load_adamerging

    outcome = run_adamerging(*load_adamerging(path))
    d = outcome.details
    print(
        f"{d['steps']} steps in {d['fit_seconds']:.0f} s: entropy {d['entropy_before']:.4f} -> {d['entropy_after']:.4f}; "
        f"recipe {outcome.output / 'recipe.yaml'}"
    )
    for line in macro_lines(outcome):
        print(line.replace("searched", "learned"))
