"""The search loop: Optuna proposes a merge recipe, the in-memory merger builds its tensors, the
objective decodes validation clips with them and scores them; nothing is written per trial.

The study lives in SQLite (`OUTPUT/search.db`), so a killed search resumes: finished trials
(complete or pruned) count against the trial budget and are not repeated. With pruning, a trial
first decodes `first_clips` clips, reports their score and stops when Optuna's median pruner
says it is worse than the median of earlier trials at that step; otherwise it decodes the rest.

With `workers: N` (N > 1), N processes — local ones, or Ray tasks on a local instance or a
cluster — each open their own merger and objective and draw trials from the same SQLite study
(Optuna's distributed mode), until the study holds `trials` finished or running trials or
`timeout` has passed; SQLite needs a file every worker can reach (one machine, or a shared disk).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
import yaml

from speechmerge.errors import SpeechmergeError
from speechmerge.merging.memory import MemoryMerger
from speechmerge.recipe import MergeRecipe
from speechmerge.search.space import check_space, trial_recipe
from speechmerge.search.spec import SearchRecipe

FINISHED = ("COMPLETE", "PRUNED")
SQLITE_WAIT_S = 60  # how long a worker waits for another's write to the shared SQLite file


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
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{Path(spec.output) / 'search.db'}", engine_kwargs={"connect_args": {"timeout": SQLITE_WAIT_S}}
    )
    return optuna.create_study(
        study_name="search",
        storage=storage,
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


def report_trial(study, trial) -> None:
    """One line on stderr per finished trial: its number, state, value, clips decoded and seconds."""
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    clips = trial.user_attrs.get("decoded_clips")
    print(f"trial {trial.number}: {trial.state.name.lower()} {value} ({clips} clips, {seconds:.1f} s)", file=sys.stderr)


def taken(study, launch: datetime) -> int:
    """Trials that count against the budget: finished ones, and those running since `launch` (a
    trial left running by a killed search is not counted)."""
    return sum(
        t.state.name in FINISHED or (t.state.name == "RUNNING" and t.datetime_start >= launch) for t in study.trials
    )


def work(
    spec: SearchRecipe,
    recipe: MergeRecipe,
    objective: Objective,
    merger: MemoryMerger | None = None,
    launch: datetime | None = None,
) -> int:
    """One worker: run trials of the shared study until it holds `spec.trials` taken ones
    (`taken`), or `spec.timeout` has passed; returns how many trials this worker ran."""
    merger = merger or MemoryMerger(recipe, include=spec.include)
    study = open_study(spec)
    run = trial_objective(spec, recipe, merger, objective)
    launch = launch or datetime.now()
    started, ran = time.monotonic(), 0
    while time.monotonic() - started < spec.timeout:
        if taken(study, launch) >= spec.trials:
            break
        study.optimize(run, n_trials=1, callbacks=[report_trial])
        ran += 1
    return ran


def _remote_worker(spec, recipe, make_objective, references, threads, launch) -> int:
    """A worker process (local or Ray): its own objective, the main process's references."""
    torch.set_num_threads(threads)
    objective = make_objective()
    if references is not None:
        objective.references = references
    return work(spec, recipe, objective, launch=launch)


def run_workers(spec: SearchRecipe, recipe: MergeRecipe, make_objective: Callable[[], Objective], references) -> int:
    """`spec.workers` workers on the shared study: local processes or Ray tasks; trials run in all."""
    from speechmerge.sysinfo import cpu_count

    threads = max(1, cpu_count() // spec.workers)
    arguments = (spec, recipe, make_objective, references, threads, datetime.now())
    if spec.executor == "ray":
        return sum(_ray_workers(spec, arguments))
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(spec.workers) as pool:
        return sum(pool.starmap(_remote_worker, [arguments] * spec.workers))


def _ray_workers(spec: SearchRecipe, arguments: tuple) -> list[int]:
    try:
        import ray
    except ImportError:
        raise SpeechmergeError("executor: ray: Ray is not installed; pip install 'speechmerge[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=spec.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=1)(_remote_worker)
        return ray.get([remote.remote(*arguments) for _ in range(spec.workers)])
    finally:
        if started_here:
            ray.shutdown()


def search(
    spec: SearchRecipe,
    recipe: MergeRecipe,
    objective: Objective,
    merger: Optional[MemoryMerger] = None,
    make_objective: Optional[Callable[[], Objective]] = None,
) -> SearchResult:
    """Run (or resume) the search; write the best recipe and the trial history to OUTPUT.

    With `spec.workers` > 1, `make_objective` builds each worker's objective (it must pickle);
    `objective.references` (if any) are handed to them."""
    check_space(spec.space, recipe, where=recipe.source.removesuffix(": merge"), grid=spec.grid)
    merger = merger or MemoryMerger(recipe, include=spec.include)
    study = open_study(spec)
    if len(finished_trials(study)) < spec.trials:
        if spec.workers > 1:
            if make_objective is None:
                raise SpeechmergeError(f"{recipe.source}: workers: {spec.workers} needs an objective factory")
            run_workers(spec, recipe, make_objective, getattr(objective, "references", None))
        else:
            work(spec, recipe, objective, merger)
    study = open_study(spec)
    if not finished_trials(study) or all(t.state.name != "COMPLETE" for t in study.trials):
        raise SpeechmergeError(f"{spec.output}: no trial completed within timeout {spec.timeout} s; give more time")
    best = study.best_trial
    chosen = best_recipe(spec, recipe, merger, best.params)
    out = Path(spec.output)
    recipe_path = out / "best.yaml"
    recipe_path.write_text(yaml.safe_dump(chosen.model_dump(mode="json", exclude_none=True), sort_keys=False))
    trials = history(study)
    (out / "trials.json").write_text(json.dumps(trials, indent=2) + "\n")
    return SearchResult(chosen, best.value, trials, recipe_path)
