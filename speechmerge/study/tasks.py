"""What one study job does, in whatever process runs it: JSON-able spec in, JSON-able result out.

`run_task(task, spec)` is the one entry point the executors call (in the driver, a pool worker or
a Ray task); it times the job (wall clock and this process's CPU time) and turns an exception
into an error line, so a failed job never takes the study down. The result's `rows` are the
job's scores (one per metric of each evaluated group); the driver writes them to the store.

Every task is idempotent: a model directory already complete from an earlier, killed attempt is
reused rather than refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from pathlib import Path

from speechmerge.evaluation.metrics import METRICS


def run_task(task: str, spec: dict, threads: int | None = None) -> dict:
    """Run one job; return {ok, result | error, started, seconds, cpu_seconds, worker}."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per job is noise in a study's log
    from speechmerge.study.store import now

    began = now()
    started, cpu_started = time.perf_counter(), time.process_time()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        result = TASKS[task](spec)
        outcome = {"ok": True, "result": result}
    except Exception as error:  # noqa: BLE001 - a job's failure is recorded, not raised
        from speechmerge.errors import SpeechmergeError

        line = str(error) if isinstance(error, SpeechmergeError) else f"{type(error).__name__}: {error}"
        outcome = {"ok": False, "error": line, "traceback": traceback.format_exc(limit=8)}
    outcome.update(
        started=began,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        worker=worker,
    )
    return outcome


def train_expert(spec: dict) -> dict:
    """Fine-tune one expert (decoder, full or LoRA as configured) into `spec['output']`."""
    from speechmerge.training.api import finetune
    from speechmerge.training.config import TrainingConfig
    from speechmerge.training.selection import DataSelection

    output = Path(spec["output"])
    if not _complete_model(output):
        finetune(
            spec["base"],
            DataSelection(**spec["selection"]),
            output,
            TrainingConfig(**spec["config"]),
            force=output.exists(),
            progress=False,
        )
    return {"model_path": str(output), "model_hash": _model_hash(output)}


def train_baseline(spec: dict) -> dict:
    """The joint or sequential baseline over the experts' selections."""
    from speechmerge.training.baselines import train_joint, train_sequential
    from speechmerge.training.config import TrainingConfig
    from speechmerge.training.selection import DataSelection

    output = Path(spec["output"])
    if not _complete_model(output):
        train = train_joint if spec["baseline"] == "joint" else train_sequential
        selections = [DataSelection(**s) for s in spec["selections"]]
        train(spec["base"], selections, output, TrainingConfig(**spec["config"]), force=output.exists(), progress=False)
    return {"model_path": str(output), "model_hash": _model_hash(output)}


def evaluate_model(spec: dict) -> dict:
    """Score one model (base, expert, baseline) on every set of the spec."""
    rows, timing = _score(spec["model"], spec)
    return {"model_path": str(spec["model"]), "rows": rows, "timing": timing}


def merge_and_evaluate(spec: dict) -> dict:
    """Merge one grid point into `spec['output']`, score it, and delete it unless it is kept."""
    from speechmerge.recipe import parse_recipe

    return _merged_and_scored(parse_recipe(spec["recipe"], where=f"study job {spec['label']}"), spec)


def search_and_test(spec: dict) -> dict:
    """`search:`: search the method's coefficients on the validation sets from its chosen setting
    (speechmerge.search; resumable from its Optuna store in `spec['work']`), merge the best trial's
    recipe and score it on the test sets."""
    from speechmerge.merging.memory import MemoryMerger
    from speechmerge.recipe import parse_recipe
    from speechmerge.search.api import scored_objective
    from speechmerge.search.run import search
    from speechmerge.search.spec import SearchRecipe
    from speechmerge.study.data import load_set

    recipe = parse_recipe(spec["recipe"], where=f"study job {spec['label']}")
    searched = SearchRecipe.model_validate(
        {**spec["learn"], "merge": spec["recipe"], "validation": [s["path"] for s in spec["validation"]]}
        | {"output": spec["work"]}
    )
    clips = [(item["name"], u) for item in spec["validation"] for u in load_set(item)]
    started = time.perf_counter()
    merger = MemoryMerger(recipe, include=searched.include)
    objective = scored_objective(
        recipe, clips, merger, searched.objective, searched.select_by, searched.include, searched.encoder_window
    )
    result = search(searched, recipe, objective, merger=merger)
    details = {
        "validation_objective": result.best_value,
        "trials": len(result.trials),
        "recipe": str(result.recipe_path),
    }
    return _merged_and_scored(result.best_recipe, spec, time.perf_counter() - started, details)


def adamerge_and_test(spec: dict) -> dict:
    """`adamerging:`: learn λ per expert and decoder block on the validation sets' audio (no text
    read; speechmerge.search.adamerging), merge the learned recipe and score it on the test sets."""
    import yaml

    from speechmerge.checkpoints.resolve import resolve_model_dir
    from speechmerge.recipe import parse_recipe
    from speechmerge.search.adamerging import AdaMerging
    from speechmerge.study.data import load_set
    from speechmerge.study.recipe import AdaMergingSpec

    recipe = parse_recipe(spec["recipe"], where=f"study job {spec['label']}")
    learn = AdaMergingSpec.model_validate(spec["learn"])
    unlabelled = {"text": "", "translation": None}  # AdaMerging learns from audio alone
    clips = [u.model_copy(update=unlabelled) for item in spec["validation"] for u in load_set(item)]
    started = time.perf_counter()
    adamerging = AdaMerging(recipe, resolve_model_dir(recipe.base), clips, **learn.options())
    fitted = adamerging.fit(learn.steps, seed=learn.seed)
    learned = adamerging.as_recipe()
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    (work / "learned.yaml").write_text(
        yaml.safe_dump(learned.model_dump(mode="json", exclude_none=True), sort_keys=False)
    )
    details = {
        "entropy_first": fitted.entropies[0] if fitted.entropies else None,
        "entropy_last": fitted.entropies[-1] if fitted.entropies else None,
        "steps": len(fitted.entropies),
        "coefficients": fitted.coefficients,
        "recipe": str(work / "learned.yaml"),
    }
    return _merged_and_scored(learned, spec, time.perf_counter() - started, details)


def _merged_and_scored(recipe, spec: dict, learn_seconds: float | None = None, details: dict | None = None) -> dict:
    """Merge `recipe` into `spec['output']` (unless a finished merge is there), score it on the
    spec's sets, drop it unless kept; a learned recipe also records how it was learned."""
    from speechmerge.merging.api import merge

    output = Path(spec["output"])
    merge_seconds = 0.0
    if not (output / "speechmerge_merge.json").is_file():
        started = time.perf_counter()
        merge(recipe, output, force=output.exists(), show_progress=False)
        merge_seconds = time.perf_counter() - started
    model_hash = _model_hash(output)
    rows, timing = _score(output, spec)
    if not spec["keep"]:
        shutil.rmtree(output, ignore_errors=True)
    timing = {**timing, "merge_seconds": round(merge_seconds, 3)}
    result = {"model_path": str(output) if spec["keep"] else None, "model_hash": model_hash, "rows": rows}
    if details is not None:
        result["learned"] = details
        timing["learn_seconds"] = round(learn_seconds, 3)
    return {**result, "timing": timing}


def gather_statistics(spec: dict) -> dict:
    """An expert's data statistics on the utterances of `spec['manifest']`, into the statistics
    cache (a hit when an earlier attempt or another study gathered them)."""
    from speechmerge.data.manifest import read_manifest
    from speechmerge.datastats import StatisticsSettings, expert_statistics

    settings = StatisticsSettings.model_validate(spec["settings"])
    statistics = expert_statistics(spec["model"], read_manifest(Path(spec["manifest"])), settings, base=spec["base"])
    record = statistics.record
    return {
        "statistics": str(statistics.folder),
        "utterances": len(record.utterances),
        "tokens": record.tokens,
        "parts": record.parts,
        "gather_seconds": round(record.seconds, 3),  # when they were gathered (maybe by an earlier job)
        "disk_bytes": sum(f.stat().st_size for f in statistics.folder.iterdir()),
    }


def _score(model, spec: dict) -> tuple[list[dict], dict]:
    """Evaluate on the spec's sets in one decoding pass, then score each set apart, under its own
    name: one row per (set, group, metric), labelled with the set's stage and scope."""
    from speechmerge.evaluation.api import evaluate
    from speechmerge.evaluation.options import EvalOptions
    from speechmerge.study.data import load_set

    loaded = [(item, load_set(item)) for item in spec["sets"]]
    result = evaluate(model, [utterances for _, utterances in loaded], EvalOptions.model_validate(spec["options"]))
    rows, start = [], 0
    for item, utterances in loaded:  # predictions come in the order of the data given
        rows += set_rows(item, result.predictions[start : start + len(utterances)])
        start += len(utterances)
    timing = result.timing.model_dump()
    return rows, {k: timing[k] for k in ("utterances", "decoded", "from_cache", "decode_seconds")}


def set_rows(item: dict, predictions: list) -> list[dict]:
    """The score rows of one evaluation set (`item`: its name, stage, scope) from its predictions."""
    from speechmerge.evaluation.scoring import group_scores
    from speechmerge.evaluation.statistics import group_statistics

    groups, _ = group_scores(predictions)
    members = {group.key: [p for p in predictions if p.group == group.key] for group in groups}
    return [
        {
            "stage": item["stage"],
            "scope": item["scope"],
            "evaluation": item["name"],
            "language": group.language,
            "task": group.task,
            "domain": group.domain,
            "metric": metric,
            "value": float(value),
            "utterances": group.utterances,
            "statistics": statistics.model_dump()
            if (statistics := group_statistics(members[group.key], metric))
            else None,
        }
        for group in groups
        for metric in METRICS
        if (value := group.metric(metric)) is not None
    ]


def _complete_model(path: Path) -> bool:
    from speechmerge.training.expert import RECORD

    return (path / RECORD).is_file()


def _model_hash(path: Path) -> str:
    from speechmerge.checkpoints.resolve import open_checkpoint

    return open_checkpoint(path).content_hash()


TASKS = {
    "train_expert": train_expert,
    "train_baseline": train_baseline,
    "evaluate_model": evaluate_model,
    "merge_and_evaluate": merge_and_evaluate,
    "gather_statistics": gather_statistics,
    "search_and_test": search_and_test,
    "adamerge_and_test": adamerge_and_test,
}
