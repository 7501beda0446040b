"""Reusable input buffers for the merge engine's reader.

The engine serves every allocation of 1 MiB or more from its own mapping
(`engine.return_freed_memory_promptly`), so a fresh buffer's pages are faulted in, and zeroed by
the kernel, on first write. Reading Whisper-small × 3's 3.6 GiB of float32 inputs tensor by tensor
took 4.4–4.6 s into fresh buffers and 0.9–1.0 s into reused ones on the 2-core development VM
(`benchmarks/bench_reads.py`, docs/performance.md), and the reader is what a per-tensor merge waits for.

The pool hands out views of flat buffers it keeps and takes them back once nothing reads them.
It holds at most `limit` bytes, handed out or idle (the engine gives it the inputs' share of its
memory budget): an allocation that would pass it frees idle buffers first, smallest first, so
reuse costs no memory beyond what the engine's plan allows.
"""

from __future__ import annotations

import threading

import torch


class BufferPool:
    """Flat buffers of one dtype on one device, reused best-fit (the smallest idle buffer that is
    large enough), shared by the reader thread (`take`) and the merging thread (`give_back`)."""

    def __init__(self, dtype: torch.dtype, device: torch.device, limit: int):
        self.dtype = dtype
        self.device = device
        self.limit = limit
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.allocated = 0  # bytes of every buffer the pool made and still holds or handed out
        self._idle: list[torch.Tensor] = []  # by size, smallest first
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """An uninitialised tensor of `shape` and the flat buffer it views (to give back)."""
        numel = torch.Size(shape).numel()
        with self._lock:
            fitting = next((i for i, buffer in enumerate(self._idle) if buffer.numel() >= max(numel, 1)), None)
            buffer = self._idle.pop(fitting) if fitting is not None else None
            if buffer is None:
                self.allocated += max(numel, 1) * self.itemsize
                self._free_idle_above_limit()
        if buffer is None:
            buffer = torch.empty(max(numel, 1), dtype=self.dtype, device=self.device)
        return buffer[:numel].view(shape), buffer

    def give_back(self, buffers: list[torch.Tensor]) -> None:
        """Return buffers nothing reads any more (idle until taken again, within the limit)."""
        with self._lock:
            self._idle.extend(buffers)
            self._idle.sort(key=torch.Tensor.numel)
            self._free_idle_above_limit()

    def _free_idle_above_limit(self) -> None:
        while self._idle and self.allocated > self.limit:
            buffer = self._idle.pop(0)
            self.allocated -= buffer.numel() * buffer.element_size()

    def idle_bytes(self) -> int:
        with self._lock:
            return sum(buffer.numel() * buffer.element_size() for buffer in self._idle)
