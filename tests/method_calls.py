"""Calling a registered merge method directly on small tensors through the engine's own step
(`engine.apply_method`: per-tensor statistics, then the method), as the engine does for a whole
tensor."""

from __future__ import annotations

import zlib

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


class SyntheticStatistics:
    """One expert's data statistics in memory, shaped like `speechmerge.datastats.Statistics`:
    a well-conditioned Gram matrix A Aᵀ/n + I for every 2-D `matrices` entry and a positive Fisher
    for every tensor, seeded per (expert, tensor)."""

    def __init__(self, expert: int, shapes: dict[str, tuple[int, ...]], matrices: set[str], rows: int = 64):
        self.folder, self.expert, self.shapes, self.matrices, self.rows = (
            f"<expert {expert}>",
            expert,
            shapes,
            matrices,
            rows,
        )

    def _generator(self, name: str) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32(f"{self.expert}|{name}".encode()))

    def has_gram(self, weight: str) -> bool:
        return weight in self.matrices

    def gram(self, weight: str) -> tuple[torch.Tensor, int]:
        columns = self.shapes[weight][1]
        a = torch.randn(columns, columns, generator=self._generator(weight))
        return (a @ a.T / columns + torch.eye(columns)) * self.rows, self.rows

    def has_fisher(self, name: str) -> bool:
        return name in self.shapes

    def fisher(self, name: str) -> torch.Tensor:
        return 0.5 + torch.rand(self.shapes[name], generator=self._generator(name))


def with_synthetic_data(method, ctx: TensorContext, experts: int, shape: tuple[int, ...]) -> TensorContext:
    """`ctx` carrying synthetic statistics for each expert when `method` needs data, else `ctx`."""
    from dataclasses import replace

    if not method.needs:
        return ctx
    matrices = {ctx.name} if ctx.is_matrix else set()
    return replace(ctx, data=[SyntheticStatistics(t, {ctx.name: shape}, matrices) for t in range(experts)])
