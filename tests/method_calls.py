"""Calling a registered merge method directly on small tensors through the engine's own step
(`engine.apply_method`: per-tensor statistics, then the method), as the engine does for a whole
tensor."""

from __future__ import annotations

import torch

from speechmerge.checkpoints.whisper import TensorRole
from speechmerge.merging.context import TensorContext
from speechmerge.merging.engine import apply_method
from speechmerge.merging.registry import get_method

MATRIX = "model.encoder.layers.0.fc1.weight"


def tensor_context(name: str = MATRIX, role: str = "mlp", is_matrix: bool = True, seed: int = 0) -> TensorContext:
    return TensorContext(name, TensorRole(name, role, name.split(".")[1], 0), is_matrix, seed, torch.device("cpu"))


def call_method(
    method: str, tasks: torch.Tensor, base: torch.Tensor | None = None, ctx: TensorContext | None = None, **params
) -> torch.Tensor:
    """The method's result on a copy of `tasks` (a task vector for `space="deltas"` methods)."""
    declared = get_method(method)
    values = declared.validate(params, "params")
    return apply_method(declared, tasks.clone(), base, torch.ones(tasks.shape[0]), ctx or tensor_context(), values)
