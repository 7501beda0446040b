"""The merge entry point: recipe in, complete Hugging Face Whisper directory out.

The output directory holds the merged weights (sharded safetensors), `config.json`,
`generation_config.json`, the processor and tokenizer files carried from the base (or
`processor_from`), the resolved recipe (`speechmerge_recipe.yaml`), a run record
(`speechmerge_merge.json`: inputs with content hashes, method, every parameter, timings,
memory, the fate of every tensor) and a model card (`README.md`). It is written into a
temporary directory beside the target and renamed only when complete.
"""

from __future__ import annotations

import json
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path

import torch

import speechmerge
from speechmerge.checkpoints.dtypes import dtype_name
from speechmerge.checkpoints.resolve import resolve_model_dir
from speechmerge.checkpoints.tokenizer import check_tokenizer_once
from speechmerge.checkpoints.whisper import PROCESSOR_FILES
from speechmerge.checkpoints.writer import StreamingSafetensorsWriter, TensorSlot, parse_size
from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_directory, refuse_existing
from speechmerge.merging.engine import MergeReport, execute
from speechmerge.merging.plan import MergePlan, build_plan
from speechmerge.recipe import MergeRecipe, load_recipe, recipe_yaml


def merge(
    recipe: MergeRecipe,
    output: Path | str | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> tuple[Path, MergeReport]:
    """Merge as the recipe says; return the output directory and what was done."""
    target = Path(output or recipe.output or "")
    if not str(target) or str(target) == ".":
        raise SpeechmergeError(
            f"{recipe.source}: output: no output directory; set `output:` in the recipe or pass --output"
        )
    refuse_existing(target, force)
    parse_size(recipe.shard_size)
    budget = parse_size(recipe.memory_budget)
    plan = build_plan(recipe)
    if plan.needs:
        plan.data_statistics = gather_data_statistics(plan, show_progress)
    carry_from = Path(resolve_model_dir(recipe.processor_from) if recipe.processor_from else plan.reference.path)
    if (carry_from / "tokenizer.json").is_file():
        check_tokenizer_once(carry_from)
    slots = [TensorSlot(e.name, e.shape, e.out_dtype) for e in plan.entries]
    inputs = _inputs(plan)
    with atomic_directory(target, force=force) as tmp:
        writer = StreamingSafetensorsWriter(
            tmp, slots, parse_size(recipe.shard_size), metadata={"speechmerge_method": recipe.method}
        )
        try:
            report = execute(plan, writer, show_progress=show_progress, memory_budget=budget)
            writer.close()
        finally:
            writer.abort()
        _write_config(plan, tmp)
        _carry_processor_files(carry_from, tmp)
        resolved = {
            "method": recipe.method,
            "params": plan.params,
            "overrides": [o.model_dump(exclude_none=True) for o in recipe.overrides],
        }
        if plan.data_statistics:
            resolved["data_statistics"] = [
                {"statistics": s.folder.name, "data_hash": s.record.data_hash, "utterances": len(s.record.utterances)}
                for s in plan.data_statistics
            ]
        (tmp / "speechmerge_recipe.yaml").write_text(recipe_yaml(recipe, plan.params))
        record = _run_record(plan, report, inputs, resolved)
        (tmp / "speechmerge_merge.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(_model_card(plan, record))
    return target, report


def gather_data_statistics(plan: MergePlan, show_progress: bool = False) -> list:
    """Each expert's data statistics (`plan.needs`) on the manifests of its `data:`, from the
    statistics cache or gathered (speechmerge.datastats), checked to belong to that expert."""
    from speechmerge.data.manifest import read_manifest
    from speechmerge.datastats import StatisticsSettings, expert_statistics

    recipe = plan.recipe
    spec = recipe.data_statistics
    settings = StatisticsSettings(
        statistics=plan.needs, utterances=spec.utterances, seed=spec.seed, batch_size=spec.batch_size
    )
    gathered = []
    for i, (expert, checkpoint) in enumerate(zip(recipe.experts, plan.experts)):
        utterances = [u for manifest in expert.data or () for u in read_manifest(Path(manifest))]
        if not utterances:
            raise SpeechmergeError(f"{recipe.source}: experts[{i}].data: no utterances in {', '.join(expert.data)}")
        statistics = expert_statistics(
            checkpoint.path, utterances, settings, base=plan.base.path if plan.base else None, progress=show_progress
        )
        statistics.check_model(checkpoint.content_hash(), recipe.expert_label(i))
        gathered.append(statistics)
    return gathered


def merge_from_recipe_file(
    path: Path,
    output: Path | None = None,
    force: bool = False,
    shard_size: str | None = None,
    device: str | None = None,
    memory_budget: str | None = None,
) -> Path:
    """`speechmerge merge`: load, override from the command line, merge, print a summary."""
    from rich.console import Console

    recipe = load_recipe(path)
    options = {"shard_size": shard_size, "device": device, "memory_budget": memory_budget}
    updates = {k: v for k, v in options.items() if v is not None}
    if updates:
        recipe = recipe.updated(**updates)
    target, report = merge(recipe, output=output, force=force)
    console = Console(stderr=True)
    console.print(f"[green]merged[/] {target}: {report.summary()}", highlight=False)
    if report.frozen:
        console.print(
            f"{len(report.frozen)} tensors had all-zero task vectors in every expert (frozen during fine-tuning) "
            "and were left as the base's; see speechmerge_merge.json",
            highlight=False,
        )
    return target


def _inputs(plan: MergePlan) -> list[dict]:
    rows = []
    if plan.base is not None:
        rows.append(
            {"role": "base", "name": plan.base.label, "path": str(plan.recipe.base), "sha256": plan.base.content_hash()}
        )
    for expert, spec in zip(plan.experts, plan.recipe.experts):
        rows.append(
            {
                "role": "expert",
                "name": expert.label,
                "path": spec.path,
                "weight": spec.weight,
                "sha256": expert.content_hash(),
            }
        )
    return rows


def _write_config(plan: MergePlan, out: Path) -> None:
    config = dict(plan.reference.config)
    dtypes = {e.out_dtype for e in plan.entries}
    if len(dtypes) == 1:
        config["dtype"] = dtype_name(dtypes.pop())
        config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _carry_processor_files(source: Path, out: Path) -> None:
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)


def _run_record(plan: MergePlan, report: MergeReport, inputs: list[dict], resolved: dict) -> dict:
    recipe = plan.recipe
    return {
        "tool": {"name": "speechmerge", "version": speechmerge.__version__, "torch": torch.__version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "device": report.device,
        },
        "inputs": inputs,
        **resolved,
        "seed": recipe.seed,
        "compute_dtype": recipe.compute_dtype,
        "output_dtype": recipe.output_dtype,
        "timing": {"seconds": round(report.seconds, 3), "statistics_seconds": round(report.statistics_seconds, 3)},
        "memory": {
            "peak_anonymous_bytes": report.peak_anonymous_bytes,
            "peak_rss_bytes": report.peak_rss_bytes,
            "largest_tensor_float32_bytes": report.largest_tensor_bytes,
            "budget_bytes": report.budget_bytes,
            "largest_unit_bytes": (len(plan.experts) + 2) * report.largest_tensor_bytes,
        },
        "tensors_streamed_in_row_blocks": report.split,
        "tensors": {
            "total": report.tensors,
            "merged": len(report.merged),
            "frozen_left_as_base": report.frozen,
            "kept_by_override": report.kept,
            "tied_aliases_not_written": report.skipped_aliases,
        },
    }


def _model_card(plan: MergePlan, record: dict) -> str:
    method = plan.method
    base_line = f"base_model: {plan.recipe.base}\n" if plan.recipe.base else ""
    rows = "\n".join(
        f"| {row['role']} | {row['name']} | `{row['path']}` | {row.get('weight', '')} | `{row['sha256'][:16]}` |"
        for row in record["inputs"]
    )
    params = "\n".join(f"| `{k}` | `{v}` |" for k, v in plan.params.items()) or "| (none) | |"
    tensors = record["tensors"]
    return f"""---
library_name: transformers
pipeline_tag: automatic-speech-recognition
{base_line}tags:
- whisper
- merge
- speechmerge
---

# Merged Whisper: {method.title}

Made with speechmerge {speechmerge.__version__} on {record["created"]} by merging {len(plan.experts)}
expert(s) with **{method.name}** ({method.source}).

Variant: {method.variant}

## Inputs

| role | name | path | weight | sha256 (first 16) |
|---|---|---|---|---|
{rows}

## Parameters

| parameter | value |
|---|---|
{params}

Overrides: {len(plan.recipe.overrides)}; seed {plan.recipe.seed}; compute dtype {plan.recipe.compute_dtype};
output dtype {plan.recipe.output_dtype}.

## What happened to each tensor

{tensors["total"]} tensors: {tensors["merged"]} merged, {len(tensors["frozen_left_as_base"])} left as the base's because
every expert's task vector was zero there (frozen during fine-tuning), {len(tensors["kept_by_override"])} kept by override.
Merge time {record["timing"]["seconds"]} s on {record["host"]["device"]}; peak anonymous memory
{record["memory"]["peak_anonymous_bytes"] / 2**20:.0f} MiB.

The full recipe is in `speechmerge_recipe.yaml` and the run record in `speechmerge_merge.json`.
"""
