"""`speechmerge study`: the pipeline from a study recipe to a report.

    data -> experts + baselines -> score base/experts/baselines (validation and test)
         -> merge + score every grid point on validation -> per method the best point
         -> merge + score that point on test (in-domain, out-of-domain, retention) -> report

Each arrow is a stage of content-addressed jobs (speechmerge/study/jobs.py); a stage's jobs run
on the chosen executor and the driver records each outcome in the store as it arrives. A job
already done in the store is skipped, so a killed study resumes and a grown grid runs only its
new points. A failed job is recorded with its error; the jobs that need it are skipped and the
study goes on with the rest, then exits non-zero naming them.
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.study.data import StudyData, prepare_data
from speechmerge.study.jobs import Job, job_key, versions
from speechmerge.study.recipe import StudyRecipe, load_study, method_grid
from speechmerge.study.store import STORE_FILE, Store, now

MODEL_FOLDERS = {"expert": "experts", "baseline": "baselines", "merge": "merges"}


@dataclass(frozen=True)
class ModelRef:
    """A model the study scores or merges: its label, identity (for keys), path and making job."""

    name: str
    identity: str
    path: str
    job: str | None = None


@dataclass
class StudyPlan:
    recipe: StudyRecipe
    folder: Path
    data: StudyData
    base: ModelRef
    experts: list[ModelRef]
    training: list[Job]
    references: list[Job]
    validation: list[Job]
    grid: dict[str, list[dict]]

    def eval_options(self) -> dict:
        spec = self.recipe.evaluation
        decode = {
            "backend": spec.backend,
            "beam_size": spec.beam_size,
            "batch_size": spec.batch_size,
            "max_new_tokens": spec.max_new_tokens,
        }
        return {"decode": decode, "cer": spec.cer}

    def eval_identity(self) -> dict:
        from speechmerge.evaluation.options import DecodeOptions

        options = self.eval_options()
        return {"predictions": DecodeOptions(**options["decode"]).prediction_key(), "cer": options["cer"]}


def plan_study(recipe: StudyRecipe, progress: bool = True) -> StudyPlan:
    """Validate the grid, build the data, and lay out every job up to validation."""
    grid = method_grid(recipe)
    folder = recipe.folder()
    data = prepare_data(recipe, progress=progress)
    base = ModelRef("base", _content_hash(recipe.base, recipe, "base"), recipe.base)
    plan = StudyPlan(recipe, folder, data, base, [], [], [], [], grid)
    config = recipe.experts.config().model_dump(mode="json")
    for group in data.experts:
        if group.path is not None:
            plan.experts.append(
                ModelRef(group.name, _content_hash(group.path, recipe, f"experts.given {group.name}"), group.path)
            )
            continue
        selection = group.selection.model_dump(mode="json")
        key = job_key(
            "expert",
            base=base.identity,
            data=data.training_digest[group.name],
            selection=_labels(selection),
            config=config,
        )
        output = folder / MODEL_FOLDERS["expert"] / f"{group.name}-{key[:8]}"
        spec = {"base": recipe.base, "selection": selection, "config": config, "output": str(output)}
        plan.training.append(
            Job(key, "expert", f"expert {group.name}", "train_expert", spec, model_kind="expert", model=group.name)
        )
        plan.experts.append(ModelRef(group.name, key, str(output), key))
    plan.training = interleaved_by_audio(plan.training)
    baselines = _baseline_jobs(plan)
    plan.training += baselines
    options, identity = plan.eval_options(), plan.eval_identity()
    sets = [s.spec() for s in data.sets]
    digests = [s.digest for s in data.sets]
    references = [
        (base, "base"),
        *((e, "expert") for e in plan.experts),
        *((ModelRef(j.model, j.key, j.spec["output"], j.key), "baseline") for j in baselines),
    ]
    for ref, kind in references:
        key = job_key("evaluate", model=ref.identity, sets=digests, evaluation=identity)
        spec = {"model": ref.path, "sets": sets, "options": options}
        plan.references.append(
            Job(
                key,
                "evaluate",
                f"score {kind} {ref.name}",
                "evaluate_model",
                spec,
                model_kind=kind,
                model=ref.name,
                depends=(ref.job,) if ref.job else (),
            )
        )
    validation_sets = [s.spec() for s in data.stage("validation")]
    validation_digests = [s.digest for s in data.stage("validation")]
    for method, points in grid.items():
        for point in points:
            merge_id = _merge_identity(plan, method, point)
            key = job_key("validate", merge=merge_id, sets=validation_digests, evaluation=identity)
            label = setting_label(method, point, points)
            # a method's only point is surely the one its test scores: its model stays for the test job
            keep = recipe.keep_models == "all" or len(points) == 1
            plan.validation.append(_merge_job(plan, "validate", key, method, point, label, validation_sets, keep))
    return plan


def test_job(plan: StudyPlan, method: str, point: dict) -> Job:
    """The job that scores a method's selected point on every test set (merging it again unless its
    validation job kept the model: merging is deterministic, and both jobs use the same folder)."""
    test_sets = plan.data.stage("test")
    key = job_key(
        "test",
        merge=_merge_identity(plan, method, point),
        sets=[s.digest for s in test_sets],
        evaluation=plan.eval_identity(),
    )
    return _merge_job(
        plan, "test", key, method, point, method, [s.spec() for s in test_sets], plan.recipe.keep_models != "none"
    )


def _merge_job(
    plan: StudyPlan, kind: str, key: str, method: str, point: dict, label: str, sets: list[dict], keep: bool
) -> Job:
    merge_key = job_key("merge", merge=_merge_identity(plan, method, point))
    output = plan.folder / MODEL_FOLDERS["merge"] / f"{method}-{merge_key[:8]}"
    merge_options = plan.recipe.merge
    recipe = {
        "base": plan.base.path,
        "experts": [{"path": e.path, "name": e.name} for e in plan.experts],
        "method": method,
        "params": point,
        "output_dtype": merge_options.output_dtype,
        "device": merge_options.device,
        "memory_budget": merge_options.memory_budget,
        "seed": merge_options.seed,
    }
    spec = {
        "recipe": recipe,
        "output": str(output),
        "keep": keep,
        "sets": sets,
        "options": plan.eval_options(),
        "label": label,
    }
    depends = tuple(e.job for e in plan.experts if e.job)
    return Job(
        key,
        kind,
        f"{kind} {label}",
        "merge_and_evaluate",
        spec,
        stage="validation" if kind == "validate" else "test",
        model_kind="merge",
        model=label,
        method=method,
        setting=point,
        depends=depends,
    )


def _merge_identity(plan: StudyPlan, method: str, point: dict) -> dict:
    return {
        "method": method,
        "params": point,
        "base": plan.base.identity,
        "experts": [e.identity for e in plan.experts],
        "options": plan.recipe.merge.model_dump(mode="json"),
    }


def interleaved_by_audio(jobs: list[Job]) -> list[Job]:
    """Expert jobs round-robin over the audio they train on (languages, domains): the ASR and ST
    experts of one language read the same clips, whose encoder outputs the first of them caches,
    so parallel workers should start with different languages rather than encode the same clips
    twice at once."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        selection = job.spec["selection"]
        groups.setdefault((tuple(selection.get("languages") or ()), tuple(selection.get("domains") or ())), []).append(
            job
        )
    return [job for turn in itertools.zip_longest(*groups.values()) for job in turn if job is not None]


def _baseline_jobs(plan: StudyPlan) -> list[Job]:
    spec = plan.recipe.baselines
    trained = [g for g in plan.data.experts if g.path is None]
    kinds = [kind for kind in ("joint", "sequential") if getattr(spec, kind)]
    if kinds and len(trained) < 2:
        raise SpeechmergeError(
            f"{plan.recipe.source}: baselines: need at least two trained experts' data; this study trains {len(trained)}"
        )
    config = spec.training if spec.training is not None else plan.recipe.experts.training
    from speechmerge.training.config import TrainingConfig

    config = TrainingConfig(**config).model_dump(mode="json")
    selections = [g.selection.model_dump(mode="json") for g in trained]
    data = [plan.data.training_digest[g.name] for g in trained]
    jobs = []
    for kind in kinds:
        key = job_key(
            "baseline",
            baseline=kind,
            base=plan.base.identity,
            data=data,
            selections=[_labels(s) for s in selections],
            config=config,
        )
        output = plan.folder / MODEL_FOLDERS["baseline"] / f"{kind}-{key[:8]}"
        job_spec = {
            "baseline": kind,
            "base": plan.recipe.base,
            "selections": selections,
            "config": config,
            "output": str(output),
        }
        jobs.append(
            Job(key, "baseline", f"baseline {kind}", "train_baseline", job_spec, model_kind="baseline", model=kind)
        )
    return jobs


def _labels(selection: dict) -> dict:
    """A selection without its source paths (the data digest stands for them)."""
    return {k: v for k, v in selection.items() if k != "sources"}


def _content_hash(reference: str, recipe: StudyRecipe, key: str) -> str:
    from speechmerge.checkpoints.reader import open_checkpoint

    try:
        return open_checkpoint(reference).content_hash()
    except SpeechmergeError as error:
        raise SpeechmergeError(f"{recipe.source}: {key}: {error}") from None


def setting_label(method: str, point: dict, points: list[dict]) -> str:
    """`method` alone, or `method[k=v,...]` naming the parameters its grid varies."""
    varying = [k for k in point if len({json.dumps(p.get(k)) for p in points}) > 1]
    return method if not varying else f"{method}[{','.join(f'{k}={point[k]}' for k in varying)}]"


# running


class StageRunner:
    """Runs jobs on an executor, skipping done ones, recording every outcome in the store."""

    def __init__(self, store: Store, executor, only_new: bool, progress: bool):
        self.store, self.executor, self.only_new, self.progress = store, executor, only_new, progress
        self.failed: dict[str, str] = {}
        self.blocked: list[str] = []

    def run(self, title: str, jobs: list[Job]) -> None:
        """Run the jobs not done yet; a job whose inputs are jobs of this batch waits for them and
        starts as soon as they are done (on the executor's queue), or is blocked when one fails."""
        status = self.store.status([j.key for j in jobs])
        todo = [
            j for j in jobs if not (status.get(j.key) == "done" or (status.get(j.key) == "failed" and self.only_new))
        ]
        batch = {j.key for j in todo}
        ready, waiting, lost, finished = [], [], set(), set()
        for job in todo:
            if any(d not in batch and self.store.status([d]).get(d) != "done" for d in job.depends):
                self.blocked.append(job.name)
                lost.add(job.key)
            elif any(d in batch for d in job.depends):
                waiting.append(job)
            else:
                ready.append(job)
        if not ready:
            self.blocked += [j.name for j in waiting]
            return
        by_key = {j.key: j for j in todo}

        def released(key: str, outcome: dict) -> list[tuple[str, str, dict]]:
            (finished if outcome["ok"] else lost).add(key)
            now_ready, changed = [], True
            while changed:  # blocking spreads to the jobs that wait for a blocked one
                changed = False
                for job in list(waiting):
                    if any(d in lost for d in job.depends):
                        waiting.remove(job)
                        self.blocked.append(job.name)
                        lost.add(job.key)
                        changed = True
                    elif all(d in finished for d in job.depends if d in batch):
                        waiting.remove(job)
                        now_ready.append(job)
            return self._started(now_ready)

        with _progress(self.progress) as bar:
            task = bar.add_task(title, total=len(todo) - len(lost)) if bar else None
            for key, outcome in self.executor.submit_all(self._started(ready), released):
                job = by_key[key]
                if outcome["ok"]:
                    result = outcome["result"]
                    record = {k: v for k, v in result.items() if k != "rows"}
                    self.store.finish(key, record, result.get("rows", []), outcome)
                else:
                    self.failed[job.name] = outcome["error"]
                    self.store.fail(key, outcome)
                    if bar:
                        bar.console.print(f"[red]failed[/] {job.name}: {outcome['error']}", highlight=False)
                if bar:
                    bar.update(task, advance=1, description=f"{title}: {job.name}")
        self.blocked += [j.name for j in waiting]

    def _started(self, jobs: list[Job]) -> list[tuple[str, str, dict]]:
        for job in jobs:
            self.store.start(job.key, self.executor.name)
        return [(j.key, j.task, j.spec) for j in jobs]


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def select_settings(plan: StudyPlan, store: Store) -> list[dict]:
    """Per method, the grid point with the best validation score (`best_point`), or with `select:
    significant` the default point unless that one is significantly better; stored and returned."""
    from speechmerge.study.significance import keep_default_unless_better

    by_job: dict[str, dict] = {}
    statistics: dict[str, dict] = {}  # job -> {group: per-utterance statistics}, for select: significant
    for row in store.scores():
        if row["stage"] == "validation":
            group = (row["language"], row["task"], row["domain"], row["metric"])
            by_job.setdefault(row["job"], {})[group] = row["value"]
            if row.get("statistics"):
                statistics.setdefault(row["job"], {})[group] = row["statistics"]
    base_job = next(j.key for j in plan.references if j.model_kind == "base")
    base = by_job.get(base_job, {})
    expert_jobs = {j.model: j.key for j in plan.references if j.model_kind == "expert"}
    own_expert: dict[tuple, float] = {}
    expert_statistics: dict[tuple, dict] = {}
    for values in by_job.values():
        for group in values:
            expert = next((g.name for g in plan.data.experts if g.covers(*group[:3])), None)
            if expert in expert_jobs and group in by_job.get(expert_jobs[expert], {}):
                own_expert[group] = by_job[expert_jobs[expert]][group]
                if group in statistics.get(expert_jobs[expert], {}):
                    expert_statistics[group] = statistics[expert_jobs[expert]][group]
    chosen = []
    for method in plan.grid:
        candidates = [
            (j.key, j.setting, by_job[j.key]) for j in plan.validation if j.method == method and j.key in by_job
        ]
        best = best_point(candidates, own_expert, base, plan.recipe.evaluation.select_by)
        if best and plan.recipe.evaluation.select == "significant":
            best = keep_default_unless_better(
                best,
                default_point(method, candidates),
                statistics,
                expert_statistics,
                statistics.get(base_job, {}),
                plan.recipe.evaluation.select_by,
            )
        if best:
            chosen.append({"method": method, **best})
    store.set_selections(chosen)
    return chosen


def default_point(method: str, candidates: list[tuple[str, dict, dict]]) -> tuple[str, dict] | None:
    """The (job, setting) of the candidate at the method's default parameters, if the grid holds it."""
    from speechmerge.merging.registry import get_method

    defaults = get_method(method).defaults()
    return next(((job, setting) for job, setting, _ in candidates if setting == defaults), None)


def best_point(candidates: list[tuple[str, dict, dict]], expert: dict, base: dict, criterion: str) -> dict | None:
    """The candidate (job, setting, {(language, task, domain, metric): value}) with the highest mean
    score over its groups' primary metrics (WER, else CER, for transcription; BLEU for translation).

    The score of a group is `vs_expert` or `gain_kept` against the expert covering it
    (speechmerge.evaluation.normalised). When no candidate has a defined one (an expert no better
    than zero or than the base), the raw score is used instead: 1 - WER, BLEU / 100. Ties keep the
    first candidate."""
    from speechmerge.evaluation.normalised import (
        gain_kept,
        higher_is_better_score,
        vs_expert,
    )
    from speechmerge.study.summary import primary_metric

    def normalised(group: tuple, value: float) -> float:
        metric = group[3]
        if group not in expert or (criterion == "gain_kept" and group not in base):
            return math.nan
        if criterion == "vs_expert":
            return vs_expert(metric, value, expert[group])
        return gain_kept(metric, value, expert[group], base[group])

    def raw(group: tuple, value: float) -> float:
        return higher_is_better_score(group[3], value) / (100.0 if group[3] in ("bleu", "chrf") else 1.0)

    for rule, label in (
        (normalised, f"mean {criterion} on validation"),
        (raw, "mean raw score on validation (1-WER, BLEU/100): no defined normalised score"),
    ):
        best = None
        for job, setting, values in candidates:
            scored = {}  # (language, task, domain) -> metrics scored
            for language, task, domain, metric in values:
                scored.setdefault((language, task, domain), set()).add(metric)
            scores = [rule(g, v) for g, v in values.items() if g[3] == primary_metric(g[1], scored[g[:3]])]
            kept = [x for x in scores if not math.isnan(x)]
            if kept and (best is None or sum(kept) / len(kept) > best["score"]):
                best = {"job": job, "setting": setting, "score": sum(kept) / len(kept), "criterion": label}
        if best:
            return best
    return None


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
    """Run (or resume) a study; return its folder. Raises SpeechmergeError naming failed jobs."""
    from filelock import FileLock, Timeout

    from speechmerge.study.executors import make_executor

    recipe = load_study(recipe_path)
    if output is not None:
        recipe = recipe.model_copy(update={"output": str(output)})
        recipe._source = str(recipe_path)
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
        if report_only:
            render_report(store)
            return folder
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
            hyperparameters={
                m: sorted({k for p in points for k in p if len({json.dumps(q.get(k)) for q in points}) > 1})
                for m, points in method_grid(recipe).items()
            },
        )
        try:
            plan = plan_study(recipe, progress=progress)
            runner = StageRunner(store, chosen_executor, only_new, progress)
            store.add_jobs([j.record() for j in plan.training + plan.references + plan.validation])
            store.set_plan([j.key for j in plan.training + plan.references + plan.validation])
            # one batch: a model is scored and merged as soon as the experts it needs exist
            runner.run(
                "training, scoring, merging the grid on validation", plan.training + plan.references + plan.validation
            )
            tests = [test_job(plan, c["method"], c["setting"]) for c in select_settings(plan, store)]
            store.add_jobs([j.record() for j in tests])
            store.set_plan([j.key for j in plan.training + plan.references + plan.validation + tests])
            runner.run("merging the selected settings and scoring them on test", tests)
        finally:
            chosen_executor.close()
        seconds = round(time.perf_counter() - wall, 1)
        runs = [
            *earlier.get("runs", []),
            {"started": started, "wall_seconds": seconds, "executor": chosen_executor.name, "command": _command()},
        ]
        store.set_meta(finished=now(), wall_seconds=round(sum(r["wall_seconds"] for r in runs), 1), runs=runs)
        render_report(store)
        if runner.failed or runner.blocked:
            names = list(runner.failed) + runner.blocked
            first = next(iter(runner.failed.items()), None)
            detail = f"; first: {first[0]}: {first[1]}" if first else ""
            raise SpeechmergeError(
                f"{folder}: {len(runner.failed)} job(s) failed and {len(runner.blocked)} could not start ({', '.join(names[:5])}{'...' if len(names) > 5 else ''}){detail}; "
                f"fix the cause and run the study again (finished jobs are kept), or see `speechmerge results {folder} --jobs`"
            )
        return folder
    finally:
        lock.release()


def render_report(store: Store) -> None:
    """Render the report from the store into `<study>/report/` (when the report module is installed)."""
    from speechmerge.study.results import score_rows
    from speechmerge.study.rows import StudyFacts

    folder = store.path.parent
    try:
        from speechmerge.study.report import write_report
    except ModuleNotFoundError as error:
        if error.name != "speechmerge.study.report":
            raise
        print(
            f"report: speechmerge.study.report is not available yet; the scores are in {store.path} (speechmerge results {folder})",
            file=sys.stderr,
        )
        return
    meta = store.meta()
    rows = score_rows(store)
    if not rows:
        raise SpeechmergeError(f"{folder}: no finished scores yet; run the study first")
    job_seconds: dict[str, float] = {}
    for job in store.jobs():
        job_seconds[job["kind"]] = round(job_seconds.get(job["kind"], 0.0) + (job["seconds"] or 0.0), 1)
    facts = StudyFacts(
        name=meta["name"],
        recipe=meta["recipe"],
        recipe_path=meta["recipe_path"],
        command=meta["command"],
        hardware=meta["hardware"],
        executor=meta["executor"],
        started=meta["started"],
        finished=meta.get("finished"),
        wall_seconds=meta.get("wall_seconds") or 0.0,
        job_seconds=job_seconds,
        versions=meta.get("versions", {}),
        hyperparameters=meta.get("hyperparameters", {}),
        selection_rules={method: s["criterion"] or "" for method, s in store.selections().items()},
    )
    written = write_report(facts, rows, folder / "report")
    print(
        f"report: {', '.join(str(p) for p in written.values() if str(p).endswith(('.md', '.html')))}", file=sys.stderr
    )


def _command() -> str:
    import shlex

    return (
        " ".join(shlex.quote(a) for a in ["speechmerge", *sys.argv[1:]])
        if sys.argv and "speechmerge" in sys.argv[0]
        else "speechmerge study (Python API)"
    )


def hardware() -> str:
    """CPU model, cores, memory and GPU, in one line."""
    import os

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    from speechmerge.study.executors import cpu_count

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
    except ImportError:
        pass
    return f"{model}, {cpu_count()} cores, {memory:.0f} GiB RAM, {gpu}"
