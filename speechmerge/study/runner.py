"""`speechmerge study`: the pipeline from a study recipe to a report.

    data -> experts + baselines (+ experts' data statistics for data-aware methods)
         -> score base/experts/baselines (validation and test)
         -> merge + score every grid point on validation -> per method the best point
         -> merge + score that point on test (in-domain, out-of-domain, retention),
            and the `search:` / `adamerging:` entries from their methods' points -> report

The jobs are laid out by speechmerge/study/plan.py and run by the scheduler
(speechmerge/study/scheduler.py) on the chosen executor; the driver records each outcome in the
store as it arrives. A job already done in the store is skipped, so a killed study resumes and a
grown grid runs only its new points. A failed job is recorded with its error; the jobs that need
it are skipped and the study goes on with the rest, then exits non-zero naming them.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.study.claims import check_claims
from speechmerge.study.jobs import Job, versions
from speechmerge.study.plan import learned_jobs, plan_study, searched_parameters, test_job
from speechmerge.study.recipe import StudyRecipe, load_study, method_grid
from speechmerge.study.rows import ScoreRow
from speechmerge.study.scheduler import JobScheduler
from speechmerge.study.selection import select_settings
from speechmerge.study.store import STORE_FILE, Store, now
from speechmerge.sysinfo import hardware


class StoreRecorder:
    """The scheduler's record of starts and outcomes, written to the study's store."""

    def __init__(self, store: Store, executor: str):
        self.store, self.executor = store, executor

    def status(self, keys: list[str]) -> dict[str, str]:
        return self.store.status(keys)

    def started(self, job: Job) -> None:
        self.store.start(job.key, self.executor)

    def finished(self, job: Job, outcome: dict) -> None:
        if not outcome["ok"]:
            self.store.fail(job.key, outcome)
            return
        result = outcome["result"]
        record = {k: v for k, v in result.items() if k != "rows"}
        self.store.finish(job.key, record, result.get("rows", []), outcome)


def run_study(
    recipe_path: Path,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    only_new: bool = False,
    report_only: bool = False,
    output: Path | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) a study; return its folder. Prints the main test table (stdout) and the
    report's paths (stderr). Raises SpeechmergeError naming failed jobs."""
    from filelock import FileLock, Timeout

    recipe = load_study(recipe_path)
    if output is not None:
        recipe = recipe.with_output(str(output))
    folder = recipe.folder()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".study.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SpeechmergeError(
            f"{folder}: another `speechmerge study` is running on this folder; wait for it or choose another output"
        ) from None
    try:
        store = Store(folder / STORE_FILE)
        scheduler = None
        if not report_only:
            scheduler = _run_jobs(recipe, Path(recipe_path), store, executor, workers, address, only_new, progress)
        else:
            adopt_report_keys(recipe, store)
        rows = render_report(store)
        _print_main_table(rows)
        if scheduler is not None and (scheduler.failed or scheduler.blocked):
            raise SpeechmergeError(_failure_line(folder, scheduler))
        return folder
    finally:
        lock.release()


REPORT_KEYS = ("claims", "reference")  # recipe keys that change the report and no job


def adopt_report_keys(recipe: StudyRecipe, store: Store) -> None:
    """For `--report-only`: the recipe's `claims` and `reference`, which change no job, replace the
    stored run's (checked first against the recipe's grid, so a bad claim changes nothing)."""
    meta = store.meta()
    if "recipe" not in meta:
        return
    check_claims(recipe.claims, list(method_grid(recipe)), recipe.baselines.enabled, recipe.source)
    chosen = recipe.model_dump(mode="json")
    store.set_meta(recipe={**meta["recipe"], **{key: chosen[key] for key in REPORT_KEYS}})


def _run_jobs(
    recipe: StudyRecipe,
    recipe_path: Path,
    store: Store,
    executor: str,
    workers: int | None,
    address: str | None,
    only_new: bool,
    progress: bool,
) -> JobScheduler:
    """Plan and run every job of the study, recording the run in the store's meta."""
    from speechmerge.study.executors import make_executor

    started, wall = now(), time.perf_counter()
    store.mark_interrupted()
    chosen_executor = make_executor(executor, workers, address)
    earlier = store.meta()
    store.set_meta(
        name=recipe.name,
        recipe=recipe.model_dump(mode="json"),
        recipe_path=str(recipe_path),
        command=_command(),
        hardware=hardware(),
        executor=chosen_executor.name,
        started=earlier.get("started", started),
        finished=None,
        versions=versions(),
        hyperparameters=searched_parameters(method_grid(recipe)),
    )
    try:
        plan = plan_study(recipe, progress=progress)
        recorder = StoreRecorder(store, chosen_executor.name)
        scheduler = JobScheduler(chosen_executor.submit_all, recorder, only_new, progress)
        store.add_jobs([j.record() for j in plan.jobs])
        store.set_plan([j.key for j in plan.jobs])
        # one batch: a model is scored and merged as soon as the experts it needs exist
        scheduler.run("training, scoring, merging the grid on validation", plan.jobs)
        chosen = select_settings(plan, store)
        tests = [test_job(plan, c["method"], c["setting"]) for c in chosen] + learned_jobs(plan, chosen)
        store.add_jobs([j.record() for j in tests])
        store.set_plan([j.key for j in plan.jobs + tests])
        scheduler.run("merging the selected settings and scoring them on test", tests)
    finally:
        chosen_executor.close()
    runs = [
        *earlier.get("runs", []),
        {
            "started": started,
            "wall_seconds": round(time.perf_counter() - wall, 1),
            "executor": chosen_executor.name,
            "command": _command(),
        },
    ]
    store.set_meta(finished=now(), wall_seconds=round(sum(r["wall_seconds"] for r in runs), 1), runs=runs)
    return scheduler


def _failure_line(folder: Path, scheduler: JobScheduler) -> str:
    names = list(scheduler.failed) + scheduler.blocked
    first = next(iter(scheduler.failed.items()), None)
    detail = f"; first: {first[0]}: {first[1]}" if first else ""
    listed = ", ".join(names[:5]) + ("..." if len(names) > 5 else "")
    return (
        f"{folder}: {len(scheduler.failed)} job(s) failed and {len(scheduler.blocked)} could not start "
        f"({listed}){detail}; fix the cause and run the study again (finished jobs are kept), "
        f"or see `speechmerge results {folder} --jobs`"
    )


def render_report(store: Store) -> list[ScoreRow]:
    """Render the report from the store into `<study>/report/`, name its files on stderr, and
    return the score rows it was made from."""
    from speechmerge.study.report import write_report
    from speechmerge.study.scores import score_rows, study_facts

    rows = score_rows(store)
    if not rows:
        raise SpeechmergeError(f"{store.path.parent}: no finished scores yet; run the study first")
    written = write_report(study_facts(store), rows, store.path.parent / "report")
    pages = [str(p) for p in written.values() if str(p).endswith((".md", ".html"))]
    print(f"report: {', '.join(pages)}", file=sys.stderr)
    return rows


def _print_main_table(rows: list[ScoreRow]) -> None:
    from speechmerge.study.terminal import main_table_text

    text = main_table_text(rows)
    if text is not None:
        print(text)


def _command() -> str:
    if sys.argv and "speechmerge" in sys.argv[0]:
        return " ".join(shlex.quote(a) for a in ["speechmerge", *sys.argv[1:]])
    return "speechmerge study (Python API)"
