"""The streaming merge executor: plan -> (statistics passes) -> load -> merge -> write -> free.

For each output tensor the engine reads that one tensor from the base and every expert into
a single stacked float32 buffer [T, *shape] on the compute device, subtracts the base for
task-vector methods, calls the method, adds the base back, casts and appends the result to
the output shard, then lets everything go. Peak memory is therefore about
(experts + 2) × the largest tensor — no output shard is buffered (see writer.py) and no model
is ever loaded whole. Methods that need whole-model statistics get extra streaming passes
first, with the same bound.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import torch

from speechmerge.checkpoints.reader import Checkpoint
from speechmerge.checkpoints.writer import StreamingSafetensorsWriter
from speechmerge.errors import SpeechmergeError
from speechmerge.merging.context import TensorContext
from speechmerge.merging.linalg import CHUNK
from speechmerge.merging.plan import MergePlan, PlanEntry


def anonymous_memory_bytes() -> int:
    """This process's resident anonymous memory (RssAnon), excluding memory-mapped files."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (includes memory-mapped input pages)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class MergeReport:
    """What a merge did, for the run record and the model card."""

    seconds: float = 0.0
    statistics_seconds: float = 0.0
    tensors: int = 0
    merged: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)  # all deltas zero: left as the base's
    kept: list[str] = field(default_factory=list)  # `keep: base` overrides
    skipped_aliases: list[str] = field(default_factory=list)
    peak_anonymous_bytes: int = 0
    peak_rss_bytes: int = 0
    largest_tensor_bytes: int = 0
    device: str = "cpu"

    def summary(self) -> str:
        return (
            f"{self.tensors} tensors ({len(self.merged)} merged, {len(self.frozen)} frozen kept as base, "
            f"{len(self.kept)} kept by override) in {self.seconds:.1f} s on {self.device}; "
            f"peak anonymous memory {self.peak_anonymous_bytes / 2**20:.0f} MiB"
        )


class _Loader:
    """Reads one tensor of every input into float32 buffers on the compute device."""

    def __init__(self, plan: MergePlan):
        self.plan = plan

    def _checked(self, ckpt: Checkpoint, name: str) -> torch.Tensor:
        tensor = ckpt.get(name)
        if not all(torch.isfinite(chunk).all() for chunk in tensor.reshape(-1).split(CHUNK)):
            raise SpeechmergeError(
                f"{ckpt.path}: tensor {name} contains NaN or Inf values; this checkpoint ({ckpt.label}) is broken, "
                "remove it from the recipe or re-export it"
            )
        return tensor

    def base(self, name: str) -> torch.Tensor | None:
        if self.plan.base is None:
            return None
        return self._checked(self.plan.base, name).to(self.plan.device, self.plan.compute_dtype)

    def stack(self, entry: PlanEntry) -> torch.Tensor:
        stack = torch.empty(
            (len(self.plan.experts), *entry.shape), dtype=self.plan.compute_dtype, device=self.plan.device
        )
        for index, expert in enumerate(self.plan.experts):
            stack[index].copy_(self._checked(expert, entry.name))
        return stack


def _context(plan: MergePlan, entry: PlanEntry, stats) -> TensorContext:
    return TensorContext(
        name=entry.name,
        role=entry.role,
        is_matrix=entry.is_matrix,
        seed=plan.recipe.seed,
        device=plan.device,
        stats=stats,
    )


def _statistics(plan: MergePlan, loader: _Loader, progress) -> dict[str, object]:
    """Run every whole-model statistics pass the plan's methods declare, streaming."""
    passes: dict[str, tuple[object, list[PlanEntry]]] = {}
    for entry in plan.entries:
        if entry.method is None or entry.method.statistics is None:
            continue
        stat = entry.method.statistics(len(plan.experts), entry.params)
        if stat is None:
            continue
        passes.setdefault(entry.method.name, (stat, []))[1].append(entry)
    results = {}
    for method_name, (stat, entries) in passes.items():
        for round_index in range(stat.rounds):
            task = progress.add_task(f"statistics: {method_name} round {round_index + 1}/{stat.rounds}", total=len(entries))
            for entry in entries:
                base = loader.base(entry.name)
                stack = loader.stack(entry)
                if entry.method.space == "deltas" and base is not None:
                    stack.sub_(base)
                stat.observe(round_index, stack, _context(plan, entry, None), entry.params)
                del stack, base
                progress.advance(task)
            stat.end_round(round_index)
            progress.remove_task(task)
        results[method_name] = stat.result()
    return results


def _merge_one(plan: MergePlan, entry: PlanEntry, loader: _Loader, stats: dict, report: MergeReport) -> torch.Tensor:
    base = loader.base(entry.name)
    if entry.method is None:
        report.kept.append(entry.name)
        return base
    stack = loader.stack(entry)
    if base is not None and all(torch.equal(stack[i], base) for i in range(stack.shape[0])):
        report.frozen.append(entry.name)
        return base
    method = entry.method
    if method.space == "deltas":
        stack.sub_(base)
    weights = torch.tensor(plan.weights, dtype=plan.compute_dtype)
    ctx = _context(plan, entry, stats.get(method.name))
    merged = method.fn(stack, base, weights, ctx, **entry.params)
    report.peak_anonymous_bytes = max(report.peak_anonymous_bytes, anonymous_memory_bytes())
    del stack  # free the inputs before adding the base back
    if method.space == "deltas":
        merged = merged.add_(base) if merged.data_ptr() != base.data_ptr() else merged + base
    if not torch.isfinite(merged).all():
        raise SpeechmergeError(
            f"method {method.name} produced NaN/Inf for tensor {entry.name}; this is a bug in the method or an "
            "extreme parameter — please report it with the recipe"
        )
    report.merged.append(entry.name)
    return merged


def execute(plan: MergePlan, writer: StreamingSafetensorsWriter, show_progress: bool = True) -> MergeReport:
    """Merge every planned tensor in order and stream it to `writer`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    report = MergeReport(
        tensors=len(plan.entries), skipped_aliases=plan.skipped_aliases, device=str(plan.device)
    )
    report.largest_tensor_bytes = max(
        (torch.Size(e.shape).numel() * 4 for e in plan.entries), default=0
    )
    loader = _Loader(plan)
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        stats = _statistics(plan, loader, progress)
        report.statistics_seconds = time.perf_counter() - start
        task = progress.add_task(f"merging ({plan.recipe.method})", total=len(plan.entries))
        for entry in plan.entries:
            merged = _merge_one(plan, entry, loader, stats, report)
            writer.write(entry.name, merged.to(entry.out_dtype))
            del merged
            progress.advance(task)
    report.seconds = time.perf_counter() - start
    report.peak_anonymous_bytes = max(report.peak_anonymous_bytes, anonymous_memory_bytes())
    report.peak_rss_bytes = peak_rss_bytes()
    return report
