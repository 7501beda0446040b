"""Writing merged weights: standard sharded safetensors, streamed (into the temporary directory
of `fsutil.atomic_directory`, so the output appears only when complete).

Because the merge plan knows every output tensor's name, shape and dtype before any work,
each shard's safetensors header is written first and tensor bytes are then appended as they
are computed: no shard is ever buffered in memory. The files are ordinary safetensors
(`model.safetensors`, or `model-0000i-of-0000n.safetensors` plus
`model.safetensors.index.json`) that `transformers` and `safetensors` read as usual.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from speechmerge.checkpoints.dtypes import SAFETENSORS_CODES
from speechmerge.errors import SpeechmergeError


def parse_size(text: str | int) -> int:
    """Bytes from '500MB', '2GB', '1.5GiB' or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise SpeechmergeError(f"shard size {text!r}: expected a size such as 500MB, 2GB or 1073741824")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


@dataclass(frozen=True)
class TensorSlot:
    """A planned output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


class StreamingSafetensorsWriter:
    """Writes planned tensors, in plan order, into pre-headed safetensors shards."""

    def __init__(self, directory: Path, slots: list[TensorSlot], max_shard_bytes: int, metadata: dict | None = None):
        self.directory = Path(directory)
        self.slots = slots
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards: list[list[TensorSlot]] = [[]]
        size = 0
        for slot in slots:
            if self.shards[-1] and size + slot.nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(slot)
            size += slot.nbytes
        count = len(self.shards)
        self.files = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._order = [(shard, slot) for shard, group in enumerate(self.shards) for slot in group]
        self._next = 0
        self._written = 0  # bytes of the current slot written so far
        self._handle = None
        self._shard = -1

    def _open_shard(self, shard: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header, offset = {}, 0
        for slot in self.shards[shard]:
            header[slot.name] = {
                "dtype": SAFETENSORS_CODES[slot.dtype],
                "shape": list(slot.shape),
                "data_offsets": [offset, offset + slot.nbytes],
            }
            offset += slot.nbytes
        header["__metadata__"] = self.metadata
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._handle = open(self.directory / self.files[shard], "wb")
        self._handle.write(len(encoded).to_bytes(8, "little"))
        self._handle.write(encoded)
        self._shard = shard

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor, whole or as consecutive row blocks (in order);
        names, trailing shapes and dtypes must follow the plan."""
        shard, slot = self._order[self._next]
        if name != slot.name or tuple(tensor.shape[1:]) != slot.shape[1:] or tensor.dtype != slot.dtype:
            raise RuntimeError(
                f"writer expected {slot.name} {slot.shape} {slot.dtype}, got {name} {tuple(tensor.shape)} {tensor.dtype}"
            )
        if shard != self._shard:
            self._open_shard(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._handle.write(memoryview(data))
        self._written += data.nbytes
        if self._written > slot.nbytes:
            raise RuntimeError(f"writer got {self._written} bytes for {slot.name}, which holds {slot.nbytes}")
        if self._written == slot.nbytes:
            self._next += 1
            self._written = 0

    def close(self) -> None:
        """Finish the last shard and write the index (for more than one shard)."""
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": sum(slot.nbytes for slot in self.slots)},
                "weight_map": {slot.name: self.files[s] for s, group in enumerate(self.shards) for slot in group},
            }
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
