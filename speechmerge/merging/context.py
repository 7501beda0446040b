"""What a merge method sees besides the tensors: the tensor's identity, its Whisper role,
the device, a seeded random generator, any whole-model statistics and, for data-aware methods,
each expert's data statistics."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from speechmerge.checkpoints.whisper import TensorRole

T = TypeVar("T")


@dataclass
class TensorContext:
    """Context of one output tensor during a merge."""

    name: str
    role: TensorRole
    is_matrix: bool  # a 2-D block linear weight that SVD/pruning methods act on
    seed: int
    device: torch.device
    stats: Any = None  # result of the method's whole-model statistics pass, if it declares one
    tensor_stats: Any = None  # result of its per-tensor statistics pass, if it declares one
    row_offset: int = 0  # first row of this block when a large tensor is streamed in row blocks
    data: Any = None  # per expert, its data statistics (speechmerge.datastats.Statistics), for methods that need them
    memo: dict | None = None  # decompositions kept across merges of these same inputs (MemoryMerger); None: none

    def remember(self, slot: Hashable, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`, or the value it gave for the same `key` in an earlier merge of the same
        inputs (the same task stack of this tensor). Each `slot` holds one value, the latest key's,
        so a search over weights keeps one decomposition per slot. The key must name everything
        besides the inputs that the value depends on; a remembered value is shared, never to be
        changed in place. Without a memo (the on-disk engine) it is always `compute()`."""
        if self.memo is None:
            return compute()
        held = self.memo.get(slot)
        if held is not None and held[0] == key:
            return held[1]
        value = compute()
        self.memo[slot] = (key, value)
        return value

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, tensor name, stream): reproducible whatever the
        order of tensors, the device or the number of workers."""
        digest = hashlib.blake2b(f"{self.seed}|{self.name}|{stream}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


class StatisticsPass(Protocol):
    """A whole-model statistic gathered by streaming over every tensor a method merges,
    in `rounds` passes, before the merge pass (e.g. TIES's global top-k threshold)."""

    rounds: int

    def observe(self, round_index: int, tasks: torch.Tensor, ctx: TensorContext, params: dict) -> None: ...

    def end_round(self, round_index: int) -> None: ...

    def result(self) -> Any: ...
