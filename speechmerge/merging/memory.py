"""Merging in memory: many merges of the same experts, a state dict out each time, nothing written.

    merger = MemoryMerger(recipe, include=r"model\\.decoder\\..*")
    state = merger.merge(recipe.updated(params={"scale": 0.4}))   # {name: tensor}

The base's and experts' tensors are read once, into float32 (the engine's compute dtype), and
the task vectors θ_t − θ_0 are computed once and reused by every call; each call only
re-plans the recipe (method, parameters, weights, overrides) and runs the engine's own step
(`apply_method`, with the whole-model statistics gathered as the engine gathers them), so a
call returns exactly what `speechmerge merge` writes for the same recipe, tensor for tensor.

Decompositions that depend only on the task vectors and on hyper-parameters that did not change
(TSV-M's and BoostedTSV-M's per-task SVDs and polar factors, LoRS's pruned task matrices; Iso-C's
and Iso-CTS's whole results while only the scale changes) are remembered between calls through
`TensorContext.remember`: `MemoryMerger(..., remember=True)` (the default) keeps one per tensor and
slot, `forget()` drops them. A remembered value is what the same code computes on disk, so the
result is unchanged, bit for bit.

`include` restricts the merge to the tensors whose names it matches (e.g. only the decoder when
the encoder is shared): the rest are left as the base's, as `keep: base` overrides would leave
them — `disk_recipe` writes those overrides, so the on-disk merge equals the in-memory one.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from speechmerge.errors import SpeechmergeError
from speechmerge.merging.engine import (
    apply_method,
    as_weights,
    check_finite,
    entry_weights,
    model_statistics,
    plan_context,
)
from speechmerge.merging.plan import MergePlan, PlanEntry, build_plan, replan
from speechmerge.recipe import MergeRecipe, OverrideSpec


def keep_base_override(include: str) -> OverrideSpec:
    """A `keep: base` override for every tensor whose full name `include` does not match."""
    return OverrideSpec(match=f"(?!(?:{include})$).*", keep="base")


def keep_base_outside(recipe: MergeRecipe, include: str | None) -> MergeRecipe:
    """`recipe` with a `keep: base` override for every tensor `include` does not match."""
    if include is None:
        return recipe
    keep = keep_base_override(include)
    if any(o.match == keep.match for o in recipe.overrides):
        return recipe
    return recipe.model_copy(update={"overrides": [keep, *recipe.overrides]})


class MemoryMerger:
    """The inputs of one recipe held in memory, merged again for each recipe given to `merge`."""

    def __init__(self, recipe: MergeRecipe, include: str | None = None, remember: bool = True):
        self.include = include
        self.remember = remember
        self.memo: dict[str, dict] = {}  # per tensor: the decompositions remembered across calls
        self.recipe = self.disk_recipe(recipe)
        self.plan = build_plan(self.recipe)
        selected = [e for e in self.plan.entries if e.method is not None]
        self.base: dict[str, torch.Tensor] = {}
        self.stacks: dict[str, torch.Tensor] = {}  # θ_t (weights space) or θ_t − θ_0 (deltas space)
        self.spaces: dict[str, str] = {}
        self.frozen: set[str] = set()
        self._data: dict[str, list] = {}  # data statistics per (experts' data, settings), for data-aware methods
        for entry in selected:
            self._load(entry)

    def disk_recipe(self, recipe: MergeRecipe) -> MergeRecipe:
        """`recipe` as `speechmerge merge` needs it to write the model `merge` returns."""
        return keep_base_outside(recipe, self.include)

    def _read(self, ckpt, name: str, shape) -> torch.Tensor:
        out = torch.empty(shape, dtype=self.plan.compute_dtype)
        ckpt.read_into(name, out)
        check_finite(ckpt, name, out)
        return out

    def _load(self, entry: PlanEntry) -> None:
        plan = self.plan
        base = self._read(plan.base, entry.name, entry.shape) if plan.base is not None else None
        stack = torch.empty((len(plan.experts), *entry.shape), dtype=plan.compute_dtype)
        for index, expert in enumerate(plan.experts):
            stack[index] = self._read(expert, entry.name, entry.shape)
        if base is not None and all(torch.equal(stack[i], base) for i in range(stack.shape[0])):
            self.frozen.add(entry.name)
        if entry.method.space == "deltas" and base is not None:
            stack.sub_(base)
        self.base[entry.name] = base
        self.stacks[entry.name] = stack
        self.spaces[entry.name] = entry.method.space

    def forget(self) -> None:
        """Drop every remembered decomposition (the next call recomputes them)."""
        self.memo.clear()

    @property
    def names(self) -> list[str]:
        """The tensors each call merges (the others stay the base's)."""
        return list(self.stacks)

    def _plan(self, recipe: MergeRecipe) -> MergePlan:
        if [e.path for e in recipe.experts] != [e.path for e in self.recipe.experts] or recipe.base != self.recipe.base:
            raise SpeechmergeError(
                f"{recipe.source}: base and experts must be those the in-memory merger was opened with"
            )
        plan = replan(self.plan, self.disk_recipe(recipe))
        entries = [e for e in plan.entries if e.name in self.stacks and e.method is not None]
        for entry in entries:
            if entry.method.space != self.spaces[entry.name]:
                raise SpeechmergeError(
                    f"{recipe.source}: method {entry.method.name} works on {entry.method.space}, but the merger holds "
                    f"{self.spaces[entry.name]} for {entry.name}; open a merger for this method"
                )
        return replace(plan, entries=entries, data_statistics=self._data_statistics(plan) if plan.needs else None)

    def _data_statistics(self, plan: MergePlan) -> list:
        """Each expert's data statistics, gathered (or read from their cache) once per data and settings."""
        from speechmerge.merging.api import gather_data_statistics

        recipe = plan.recipe
        key = repr(([e.data for e in recipe.experts], recipe.data_statistics.model_dump(), plan.needs))
        if key not in self._data:
            self._data[key] = gather_data_statistics(plan)
        return self._data[key]

    def _model_stats(self, plan: MergePlan) -> dict[str, object]:
        """The whole-model statistics passes, over every merged tensor, as the engine runs them."""
        results = {}
        for method_name, (stat, entries) in model_statistics(plan).items():
            for round_index in range(stat.rounds):
                for entry in entries:
                    stat.observe(round_index, self.stacks[entry.name].clone(), plan_context(plan, entry), entry.params)
                stat.end_round(round_index)
            results[method_name] = stat.result()
        return results

    def merge(self, recipe: MergeRecipe | None = None) -> dict[str, torch.Tensor]:
        """The merged tensors `recipe` (default: the one opened with) gives, in their output
        dtypes; only the tensors in `names` (the others are the base's)."""
        plan = self._plan(recipe or self.recipe)
        stats = self._model_stats(plan)
        out = {}
        for entry in plan.entries:
            base = self.base[entry.name]
            if entry.name in self.frozen:
                out[entry.name] = base.to(entry.out_dtype)
                continue
            memo = self.memo.setdefault(entry.name, {}) if self.remember else None
            ctx = plan_context(plan, entry, stats.get(entry.method.name), memo=memo)
            tasks = self.stacks[entry.name].clone()  # methods may work in place
            merged = apply_method(entry.method, tasks, base, entry_weights(plan, entry), ctx, entry.params)
            out[entry.name] = as_weights(entry, merged, base).to(entry.out_dtype)
        return out
