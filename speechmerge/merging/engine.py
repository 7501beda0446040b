"""The streaming merge executor: plan -> steps -> (load ∥ compute) -> write -> free.

The plan compiles into a flat sequence of steps. Each step needs one *unit* of input — one
tensor, or a block of its rows — read from the base and every expert into a single stacked
float32 buffer [T, *shape] on the compute device (float32 inputs are read straight into the
buffer, others through one conversion). A background thread loads the next step's unit while
the current one is computed (on the CPU reading the checkpoints side by side on two more
threads, into buffers reused from `buffers.BufferPool`), and another writes the previous
result, so reading, arithmetic and writing overlap.

Steps, in order:
1. whole-model statistics passes of the methods that declare one (TIES's global top-k), over
   every unit those methods merge;
2. per tensor: its per-tensor statistics passes over its blocks (only when a large tensor is
   split), then the merge of each unit, appended to the output shard as it is produced.

A tensor is split into row blocks when its method is entry-wise for it (given statistics) and
one unit would exceed half the memory budget; the next unit is read ahead only when both fit in
the budget. Peak working memory is therefore about min((experts + 2) × largest tensor, budget)
plus small chunked temporaries — no output shard is buffered (see writer.py) and no model is
ever loaded whole. Only a tensor whose method cannot split it may exceed the budget.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from speechmerge.checkpoints.resolve import Checkpoint
from speechmerge.checkpoints.writer import StreamingSafetensorsWriter
from speechmerge.errors import SpeechmergeError
from speechmerge.merging.buffers import BufferPool
from speechmerge.merging.context import TensorContext
from speechmerge.merging.masks import CHUNK
from speechmerge.merging.plan import MergePlan, PlanEntry
from speechmerge.merging.registry import MergeMethod
from speechmerge.progress import progress_bar
from speechmerge.sysinfo import anonymous_memory_bytes, peak_rss_bytes


@functools.cache
def return_freed_memory_promptly() -> None:
    """Ask glibc to serve every allocation of 1 MiB or more from its own mapping, returned to
    the system when freed. By default glibc raises that threshold as large blocks are freed, so
    the per-chunk temporaries of a long merge pile up in its heap instead of going back.

    Process-wide and set once, by the engine itself: every caller of `merge` (the CLI, the study
    worker, the benchmarks, a library user) gets the memory bound the engine promises."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def gather_statistics(
    factory: Callable[..., Any] | None,
    num_tasks: int,
    ctx: TensorContext,
    params: dict,
    blocks: Callable[[], Iterable[tuple[int, torch.Tensor]]],
) -> Any:
    """Run the statistics pass `factory(num_tasks, ctx, params)` makes (None: nothing to gather)
    over `blocks()` — (first row, task stack) pairs covering the tensor — in each of its rounds,
    and return its result. (The engine streams a split tensor's rounds as steps instead.)"""
    stat = factory(num_tasks, ctx, params) if factory is not None else None
    if stat is None:
        return None
    for round_index in range(stat.rounds):
        for row_offset, tasks in blocks():
            stat.observe(round_index, tasks, replace(ctx, row_offset=row_offset), params)
        stat.end_round(round_index)
    return stat.result()


def apply_method(
    method: MergeMethod,
    tasks: torch.Tensor,
    base: torch.Tensor | None,
    weights: torch.Tensor,
    ctx: TensorContext,
    params: dict,
    whole: bool = True,
) -> torch.Tensor:
    """The engine's step for one unit: statistics, then the method; returns what the method
    returns (a task vector for `space="deltas"`). For a whole tensor (`whole`) the method's
    per-tensor statistics are gathered over `tasks` first; for a row block of a split tensor
    they were gathered over every block before and come in `ctx.tensor_stats`. `ctx.stats`
    holds any whole-model statistics. A torch failure inside the method is one line naming it
    and the tensor."""
    if whole:
        stats = gather_statistics(
            method.tensor_statistics, tasks.shape[0], ctx, params, lambda: [(ctx.row_offset, tasks)]
        )
        ctx = replace(ctx, tensor_stats=stats)
    try:
        return method.fn(tasks, base, weights, ctx, **params)
    except RuntimeError as error:  # torch's numerical and allocation failures, named by tensor
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpeechmergeError(
            f"method {method.name} failed on tensor {ctx.name} {tuple(tasks.shape[1:])}: {first_line}; "
            "try other parameters for it (an override), or report it with the recipe"
        ) from error


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
    split: list[str] = field(default_factory=list)  # tensors streamed in row blocks
    peak_anonymous_bytes: int = 0
    peak_rss_bytes: int = 0
    largest_tensor_bytes: int = 0
    budget_bytes: int = 0
    device: str = "cpu"

    def summary(self) -> str:
        return (
            f"{self.tensors} tensors ({len(self.merged)} merged, {len(self.frozen)} frozen kept as base, "
            f"{len(self.kept)} kept by override) in {self.seconds:.1f} s on {self.device}; "
            f"peak anonymous memory {self.peak_anonymous_bytes / 2**20:.0f} MiB"
        )


@dataclass(frozen=True)
class Unit:
    """One tensor, or rows [start, stop) of it, and the float32 bytes it occupies when loaded
    (base + every expert + the merged result)."""

    entry: PlanEntry
    start: int
    stop: int
    whole: bool
    nbytes: int


@dataclass(frozen=True)
class Step:
    """Load `unit`, then: observe it for a statistics pass (`kind` 'model' or 'tensor', with
    its round), or merge it (`kind` 'merge')."""

    unit: Unit
    kind: str
    round_index: int = 0
    method: str = ""


@dataclass
class Loaded:
    base: torch.Tensor | None
    stack: torch.Tensor | None
    buffers: list[torch.Tensor] = field(default_factory=list)  # the pool's buffers base and stack view


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf anywhere. A sum is finite exactly when no entry is NaN or ±Inf (or the
    sum overflows, when the chunked elementwise check decides); summing is ~20× faster than
    `isfinite` over the whole tensor."""
    if torch.isfinite(tensor.sum()):
        return True
    return all(torch.isfinite(chunk).all() for chunk in tensor.reshape(-1).split(CHUNK))


def check_finite(ckpt: Checkpoint, name: str, tensor: torch.Tensor) -> None:
    """Refuse an input tensor holding NaN or Inf, naming the checkpoint and the tensor."""
    if not all_finite(tensor):
        raise SpeechmergeError(
            f"{ckpt.path}: tensor {name} contains NaN or Inf values; this checkpoint ({ckpt.label}) is broken, "
            "remove it from the recipe or re-export it"
        )


def _load(plan: MergePlan, unit: Unit, need_stack: bool, pool: BufferPool, readers: ThreadPoolExecutor) -> Loaded:
    """Read one unit of the base and of every expert into float32 buffers on the device (taken
    from `pool`; on a GPU through a CPU staging buffer) and check each is finite. On the CPU the
    checkpoints are read side by side on `readers`' threads, which do no other torch work."""
    shape = unit.entry.shape if unit.whole else (unit.stop - unit.start, *unit.entry.shape[1:])
    rows = None if unit.whole else (unit.start, unit.stop)
    loaded = Loaded(None, None)
    reads = []
    if plan.base is not None:
        loaded.base, buffer = pool.take(shape)
        loaded.buffers.append(buffer)
        reads.append((plan.base, loaded.base))
    if need_stack:
        loaded.stack, buffer = pool.take((len(plan.experts), *shape))
        loaded.buffers.append(buffer)
        reads += [(expert, loaded.stack[index]) for index, expert in enumerate(plan.experts)]
    if plan.device.type == "cpu":
        for done in [readers.submit(ckpt.read_into, unit.entry.name, out, rows) for ckpt, out in reads]:
            done.result()
    else:
        for ckpt, out in reads:
            staging = torch.empty(out.shape, dtype=out.dtype)
            ckpt.read_into(unit.entry.name, staging, rows)
            out.copy_(staging)
    for ckpt, out in reads:
        check_finite(ckpt, unit.entry.name, out)
    return loaded


def _units(plan: MergePlan, entry: PlanEntry, budget: int) -> list[Unit]:
    """The tensor whole, or in row blocks when its method is entry-wise and it is too big."""
    rows = entry.shape[0] if entry.shape else 1
    row_bytes = 4 * max(1, torch.Size(entry.shape[1:]).numel()) * (len(plan.experts) + 2)
    splittable = (
        entry.method is not None
        and len(entry.shape) >= 1
        and entry.method.is_blockwise(plan_context(plan, entry), entry.params)
    )
    if not splittable or rows * row_bytes <= budget:
        return [Unit(entry, 0, rows, True, rows * row_bytes)]
    per_block = max(1, budget // row_bytes)
    return [
        Unit(entry, start, min(rows, start + per_block), False, (min(rows, start + per_block) - start) * row_bytes)
        for start in range(0, rows, per_block)
    ]


def plan_context(
    plan: MergePlan, entry: PlanEntry, stats=None, tensor_stats=None, row_offset: int = 0, memo: dict | None = None
) -> TensorContext:
    """What the method merging `entry` sees (the engine's and the in-memory merger's one builder;
    only the latter keeps a `memo` of decompositions across merges)."""
    return TensorContext(
        name=entry.name,
        role=entry.role,
        is_matrix=entry.is_matrix,
        seed=plan.recipe.seed,
        device=plan.device,
        stats=stats,
        tensor_stats=tensor_stats,
        row_offset=row_offset,
        data=plan.data_statistics,
        memo=memo,
    )


def model_statistics(plan: MergePlan) -> dict[str, tuple[object, list[PlanEntry]]]:
    """The whole-model statistics passes the plan's methods declare, with their tensors."""
    passes: dict[str, tuple[object, list[PlanEntry]]] = {}
    for entry in plan.entries:
        if entry.method is None or entry.method.statistics is None:
            continue
        stat = entry.method.statistics(len(plan.experts), plan_context(plan, entry), entry.params)
        if stat is not None:
            passes.setdefault(entry.method.name, (stat, []))[1].append(entry)
    return passes


def _tensor_statistics(plan: MergePlan, entry: PlanEntry):
    method = entry.method
    if method is None or method.tensor_statistics is None:
        return None
    return method.tensor_statistics(len(plan.experts), plan_context(plan, entry), entry.params)


def compile_steps(plan: MergePlan, budget: int, model_passes: dict) -> list[Step]:
    """The plan as a flat sequence of steps (see the module docstring)."""
    units = {entry.name: _units(plan, entry, budget) for entry in plan.entries}
    steps: list[Step] = []
    for method_name, (stat, entries) in model_passes.items():
        for round_index in range(stat.rounds):
            steps += [Step(u, "model", round_index, method_name) for e in entries for u in units[e.name]]
    for entry in plan.entries:
        pieces = units[entry.name]
        if len(pieces) > 1:
            probe = _tensor_statistics(plan, entry)
            for round_index in range(probe.rounds if probe is not None else 0):
                steps += [Step(u, "tensor", round_index) for u in pieces]
        steps += [Step(u, "merge") for u in pieces]
    return steps


class _Executor:
    """Runs the steps in order, keeping the state that spans steps."""

    def __init__(
        self,
        plan: MergePlan,
        writer: StreamingSafetensorsWriter,
        report: MergeReport,
        model_passes: dict,
        write_pool: ThreadPoolExecutor,
        buffers: BufferPool,
    ):
        self.plan = plan
        self.writer = writer
        self.write_pool = write_pool  # one background writer: the output of a unit is written
        self.pending_write = None  # while the next unit is merged (at most one write in flight)
        self.buffers = buffers
        self.writing_buffers: list[torch.Tensor] = []  # input buffers the write in flight reads
        self.report = report
        self.model_passes = model_passes
        self.model_results: dict[str, object] = {}
        self.tensor_stat = None  # the running per-tensor pass of a split tensor
        self.tensor_stat_entry: str | None = None
        self.frozen_blocks: dict[str, bool] = {}

    def run(self, step: Step, loaded: Loaded) -> None:
        if step.kind == "merge":
            self._merge(step.unit, loaded)
            return
        if step.kind == "model":
            self._observe_model(step, loaded)
        else:
            self._observe_tensor(step, loaded)
        self.buffers.give_back(loaded.buffers)

    def _deltas(self, entry: PlanEntry, loaded: Loaded) -> torch.Tensor:
        if entry.method.space == "deltas" and loaded.base is not None:
            loaded.stack.sub_(loaded.base)
        return loaded.stack

    def _observe_model(self, step: Step, loaded: Loaded) -> None:
        stat, entries = self.model_passes[step.method]
        entry = step.unit.entry
        ctx = plan_context(self.plan, entry, row_offset=step.unit.start)
        stat.observe(step.round_index, self._deltas(entry, loaded), ctx, entry.params)
        last_unit = entries[-1].name == entry.name and step.unit.stop == (entry.shape[0] if entry.shape else 1)
        if last_unit:
            stat.end_round(step.round_index)
            if step.round_index == stat.rounds - 1:
                self.model_results[step.method] = stat.result()

    def _observe_tensor(self, step: Step, loaded: Loaded) -> None:
        entry = step.unit.entry
        if self.tensor_stat_entry != entry.name:
            self.tensor_stat, self.tensor_stat_entry = _tensor_statistics(self.plan, entry), entry.name
        ctx = plan_context(self.plan, entry, row_offset=step.unit.start)
        self.tensor_stat.observe(step.round_index, self._deltas(entry, loaded), ctx, entry.params)
        if step.unit.stop == entry.shape[0]:
            self.tensor_stat.end_round(step.round_index)

    def _merge(self, unit: Unit, loaded: Loaded) -> None:
        entry = unit.entry
        merged = self._merge_unit(unit, loaded).to(entry.out_dtype)
        # the inputs go back to the pool now, but those the merged tensor is (a view of) only
        # once it is written
        written = merged.untyped_storage().data_ptr()
        aliased = [b.untyped_storage().data_ptr() == written for b in loaded.buffers]
        self.buffers.give_back([b for b, alias in zip(loaded.buffers, aliased) if not alias])
        self.finish_writing()
        self.pending_write = self.write_pool.submit(self.writer.write, entry.name, merged)
        self.writing_buffers = [b for b, alias in zip(loaded.buffers, aliased) if alias]
        last = unit.whole or unit.stop == entry.shape[0]
        if last and entry.method is not None:
            frozen = self.frozen_blocks.pop(entry.name, True)
            (self.report.frozen if frozen else self.report.merged).append(entry.name)
            if not unit.whole:
                self.report.split.append(entry.name)
            self.tensor_stat, self.tensor_stat_entry = None, None

    def finish_writing(self) -> None:
        if self.pending_write is not None:
            self.pending_write.result()
            self.pending_write = None
            self.buffers.give_back(self.writing_buffers)
            self.writing_buffers = []

    def _merge_unit(self, unit: Unit, loaded: Loaded) -> torch.Tensor:
        """The merged weights of one unit: the base's where the method is `keep: base` or every
        expert left the unit as the base's; otherwise the method's result, base added back."""
        entry = unit.entry
        if entry.method is None:
            self.report.kept.append(entry.name)
            return loaded.base
        if _experts_equal_base(loaded):
            return loaded.base  # frozen during fine-tuning
        self.frozen_blocks[entry.name] = False
        tasks = self._deltas(entry, loaded)
        merged = apply_method(
            entry.method,
            tasks,
            loaded.base,
            entry_weights(self.plan, entry),
            self._unit_context(unit),
            entry.params,
            unit.whole,
        )
        self.report.peak_anonymous_bytes = max(self.report.peak_anonymous_bytes, anonymous_memory_bytes())
        del tasks
        return as_weights(entry, merged, loaded.base)

    def _unit_context(self, unit: Unit) -> TensorContext:
        """The unit's context: the method's whole-model statistics and, for a row block, the
        per-tensor statistics gathered over every block before."""
        entry = unit.entry
        tensor_stats = None
        if not unit.whole and self.tensor_stat is not None:
            tensor_stats = self.tensor_stat.result()
        return plan_context(
            self.plan, entry, self.model_results.get(entry.method.name), tensor_stats, row_offset=unit.start
        )


def entry_weights(plan: MergePlan, entry: PlanEntry) -> torch.Tensor:
    """The experts' weights for one tensor (a gradient or an override makes them vary by tensor)."""
    return torch.tensor(entry.weights, dtype=plan.compute_dtype)


def _experts_equal_base(loaded: Loaded) -> bool:
    base, stack = loaded.base, loaded.stack
    return base is not None and all(torch.equal(stack[i], base) for i in range(stack.shape[0]))


def as_weights(entry: PlanEntry, merged: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """A method's result as weights (θ_0 added back to a merged task vector), checked finite."""
    method = entry.method
    if method.space == "deltas":
        merged = merged.add_(base) if merged.data_ptr() != base.data_ptr() else merged + base
    if not all_finite(merged):
        raise SpeechmergeError(
            f"method {method.name} produced NaN/Inf for tensor {entry.name}; this is a bug in the method or an "
            "extreme parameter — please report it with the recipe"
        )
    return merged


def execute(
    plan: MergePlan,
    writer: StreamingSafetensorsWriter,
    show_progress: bool = True,
    memory_budget: int = 1 << 30,
) -> MergeReport:
    """Merge every planned tensor in order and stream it to `writer`.

    `memory_budget` bounds the float32 bytes in flight: tensors of entry-wise methods are split
    into row blocks of at most half of it, and the next unit is read ahead only when it fits
    beside the current one. (A tensor that no method can split is still loaded whole.)"""
    return_freed_memory_promptly()
    report = MergeReport(tensors=len(plan.entries), skipped_aliases=plan.skipped_aliases, device=str(plan.device))
    report.largest_tensor_bytes = max((torch.Size(e.shape).numel() * 4 for e in plan.entries), default=0)
    model_passes = model_statistics(plan)
    steps = compile_steps(plan, memory_budget // 2, model_passes)
    report.budget_bytes = memory_budget
    start = time.perf_counter()
    first_merge = next(i for i, s in enumerate(steps) if s.kind != "model") if steps else 0
    with (
        progress_bar(show_progress, transient=True) as progress,
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(2) as read_workers,
        ThreadPoolExecutor(1) as write_pool,
    ):
        # the inputs' share of every unit's planned bytes ((experts + 1) of experts + 2 tensors)
        inputs_share = memory_budget * (len(plan.experts) + 1) // (len(plan.experts) + 2)
        buffers = BufferPool(plan.compute_dtype, plan.device, limit=inputs_share)
        executor = _Executor(plan, writer, report, model_passes, write_pool, buffers)
        task = progress.add_task(f"merging ({plan.recipe.method})", total=len(steps))

        def submit(index: int):
            step = steps[index]
            need_stack = step.kind != "merge" or step.unit.entry.method is not None
            return reader.submit(_load, plan, step.unit, need_stack, buffers, read_workers)

        pending = submit(0) if steps else None
        for index, step in enumerate(steps):
            loaded = pending.result() if pending is not None else submit(index).result()
            ahead = index + 1 < len(steps) and step.unit.nbytes + steps[index + 1].unit.nbytes <= memory_budget
            pending = submit(index + 1) if ahead else None
            if index == first_merge:
                report.statistics_seconds = time.perf_counter() - start
            executor.run(step, loaded)
            del loaded
            progress.advance(task)
        executor.finish_writing()
    report.seconds = time.perf_counter() - start
    report.peak_anonymous_bytes = max(report.peak_anonymous_bytes, anonymous_memory_bytes())
    report.peak_rss_bytes = peak_rss_bytes()
    return report
