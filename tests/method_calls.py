"""Calling a registered merge method directly on small tensors, as the engine does for a whole
tensor: its per-tensor statistics pass first (if it declares one), then the method."""

from __future__ import annotations

import torch

from speechmerge.checkpoints.whisper import TensorRole
from speechmerge.merging.context import TensorContext
from speechmerge.merging.registry import get_method

MATRIX = "model.encoder.layers.0.fc1.weight"


def tensor_context(name: str = MATRIX, role: str = "mlp", is_matrix: bool = True, seed: int = 0) -> TensorContext:
    return TensorContext(name, TensorRole(name, role, name.split(".")[1], 0), is_matrix, seed, torch.device("cpu"))


def call_method(
    method: str, tasks: torch.Tensor, base: torch.Tensor | None = None, ctx: TensorContext | None = None, **params
) -> torch.Tensor:
    declared = get_method(method)
    values = declared.validate(params, "params")
    tasks, ctx = tasks.clone(), ctx or tensor_context()
    factory = declared.tensor_statistics
    stat = factory(tasks.shape[0], ctx, values) if factory is not None else None
    if stat is not None:
        for round_index in range(stat.rounds):
            stat.observe(round_index, tasks, ctx, values)
            stat.end_round(round_index)
        ctx.tensor_stats = stat.result()
    return declared.fn(tasks, base, torch.ones(tasks.shape[0]), ctx, **values)
