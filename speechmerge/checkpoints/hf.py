"""Hugging Face Whisper directories, read lazily one tensor at a time, and content hashes.

`HFCheckpoint` reads `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
or `pytorch_model.bin[.index.json]` (with `torch.load(weights_only=True)` only: pickled Python
objects are refused). Nothing is read until `get(name)` or `read_into(name, ...)` asks for one
tensor (or rows of it). Safetensors headers are parsed and checked here, so a truncated or
damaged file fails with one line before any work.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from speechmerge.errors import SpeechmergeError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SpeechmergeError(f"{path}: not valid JSON ({error}); the file is damaged, re-save the model") from None


class HFCheckpoint:
    """A Hugging Face Whisper directory, read one tensor at a time."""

    def __init__(self, path: Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.name
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise SpeechmergeError(
                f"{self.path}: no config.json; expected a Hugging Face Whisper model directory "
                "(config.json + model.safetensors), a CTranslate2 directory or an openai-whisper .pt file"
            )
        self.config = _read_json(config_path)
        if self.config.get("model_type") != "whisper":
            raise SpeechmergeError(
                f"{config_path}: model_type is {self.config.get('model_type')!r}, not 'whisper'; "
                "speechmerge merges Whisper checkpoints only"
            )
        self._file_of: dict[str, Path] = {}
        self._headers: dict[Path, dict] = {}
        self._fds: dict[Path, int] = {}
        self._bin_cache: dict[Path, dict] = {}
        self._meta: dict[str, tuple[tuple[int, ...], object]] = {}
        self._index_weights()

    # -- indexing -------------------------------------------------------------------------
    def _index_weights(self) -> None:
        p = self.path
        if (p / SAFE_INDEX).is_file():
            weight_map = _read_json(p / SAFE_INDEX).get("weight_map", {})
            self._file_of = {name: p / file for name, file in weight_map.items()}
        elif (p / SAFE_SINGLE).is_file():
            self._file_of = {name: p / SAFE_SINGLE for name in self._safe_header(p / SAFE_SINGLE)}
        elif (p / BIN_INDEX).is_file():
            weight_map = _read_json(p / BIN_INDEX).get("weight_map", {})
            self._file_of = {name: p / file for name, file in weight_map.items()}
        elif (p / BIN_SINGLE).is_file():
            self._file_of = {name: p / BIN_SINGLE for name in self._bin_state(p / BIN_SINGLE)}
        else:
            raise SpeechmergeError(
                f"{p}: no model.safetensors, {SAFE_INDEX}, pytorch_model.bin or {BIN_INDEX}; "
                "expected the weights of a Hugging Face Whisper model"
            )
        for file in sorted(set(self._file_of.values())):
            if not file.is_file():
                raise SpeechmergeError(f"{file}: listed in the index of {p} but missing; copy the complete model")
            if file.suffix == ".safetensors":
                for name, (shape, dtype, _) in self._safe_header(file).items():
                    if self._file_of.get(name) == file:
                        self._meta[name] = (shape, dtype)
            else:
                for name, tensor in self._bin_state(file).items():
                    if self._file_of.get(name) == file:
                        self._meta[name] = (tuple(tensor.shape), tensor.dtype)
        absent = [n for n in self._file_of if n not in self._meta]
        if absent:
            raise SpeechmergeError(
                f"{self._file_of[absent[0]]}: tensor {absent[0]} is listed in the index but not in the file; "
                "the checkpoint is incomplete, re-save it"
            )

    def _safe_header(self, file: Path) -> dict[str, tuple[tuple[int, ...], object, int]]:
        """Parse and check a safetensors header: name -> (shape, dtype, absolute byte offset).

        Parsed here rather than through `safe_open` so that `read_into` can read a tensor, or a
        block of its rows, straight into the engine's float32 buffer.
        """
        if file not in self._headers:
            self._headers[file] = parse_safetensors_header(file)
        return self._headers[file]

    def _bin_state(self, file: Path) -> dict:
        if file not in self._bin_cache:
            from speechmerge.checkpoints.torch_files import load_tensors_only

            state = load_tensors_only(
                file, "unpickling them is unsafe; re-save the model with save_pretrained() to get safetensors"
            )
            if not isinstance(state, dict):
                raise SpeechmergeError(f"{file}: expected a state dict of tensors, found {type(state).__name__}")
            self._bin_cache[file] = state
        return self._bin_cache[file]

    # -- the Checkpoint interface -------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str):
        return self._meta[name][1]

    def get(self, name: str):
        """The tensor as stored (a fresh CPU tensor)."""
        import torch

        shape, dtype = self._meta[name]
        out = torch.empty(shape, dtype=dtype)
        self.read_into(name, out)
        return out

    def read_into(self, name: str, out, rows: tuple[int, int] | None = None) -> None:
        """Read the tensor, or rows [start, stop) of it, into `out` (converting the dtype).

        Safetensors are read with `pread` straight into `out`'s memory when the dtypes agree:
        on the machines we measured, faulting in memory-mapped pages was ten times slower than
        reading the same bytes, and nothing is copied twice."""
        import torch

        file = self._file_of[name]
        if file.suffix != ".safetensors":
            stored = self._bin_state(file)[name]
            out.copy_(stored if rows is None else stored[rows[0] : rows[1]])
            return
        shape, dtype, offset = self._safe_header(file)[name]
        row_bytes = math.prod(shape[1:]) * dtype.itemsize if shape else dtype.itemsize
        start, stop = rows if rows is not None else (0, shape[0] if shape else 1)
        direct = out.dtype == dtype and out.device.type == "cpu" and out.is_contiguous()
        target = out if direct else torch.empty(out.shape, dtype=dtype)
        view = memoryview(target.reshape(-1).view(torch.uint8).numpy())
        if view.nbytes != (stop - start) * row_bytes:
            raise ValueError(f"read_into {name}: buffer of {view.nbytes} bytes for {(stop - start) * row_bytes}")
        self._pread(file, view, offset + start * row_bytes)
        if not direct:
            out.copy_(target)

    def _pread(self, file: Path, view: memoryview, offset: int) -> None:
        if file not in self._fds:
            self._fds[file] = os.open(file, os.O_RDONLY)
        done = 0
        while done < view.nbytes:
            count = os.preadv(self._fds[file], [view[done:]], offset + done)
            if count <= 0:
                raise SpeechmergeError(f"{file}: ended early while reading; the file is truncated, re-save the model")
            done += count

    def weight_files(self) -> list[Path]:
        return sorted(set(self._file_of.values()))

    def content_hash(self) -> str:
        return files_hash(self.weight_files())

    def close(self) -> None:
        for descriptor in self._fds.values():
            os.close(descriptor)
        self._fds.clear()
        self._bin_cache.clear()

    def __del__(self) -> None:
        for descriptor in getattr(self, "_fds", {}).values():
            os.close(descriptor)


def parse_safetensors_header(file: Path) -> dict[str, tuple[tuple[int, ...], object, int]]:
    """name -> (shape, dtype, absolute byte offset), after checking that the header is
    well-formed and that every tensor lies inside the file (a truncated download fails here)."""
    from speechmerge.checkpoints.dtypes import dtype_from_code

    size = file.stat().st_size
    damaged = f"{file}: corrupt or truncated safetensors file"
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SpeechmergeError(f"{damaged} ({size} bytes); re-download or re-save the model")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise SpeechmergeError(
                f"{damaged} (header of {length} bytes in a {size}-byte file); re-download or re-save the model"
            )
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SpeechmergeError(f"{damaged} (unreadable header); re-download or re-save the model") from None
    if not isinstance(header, dict):
        raise SpeechmergeError(f"{damaged} (header is not a mapping); re-download or re-save the model")
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        try:
            dtype = dtype_from_code(info["dtype"], file, name)
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SpeechmergeError(f"{damaged} (entry {name} is malformed); re-download or re-save the model") from None
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected or 8 + length + end > size:
            raise SpeechmergeError(
                f"{damaged}: tensor {name} needs bytes {begin}..{end} of the data but the file has "
                f"{size - 8 - length}; re-download or re-save the model"
            )
        tensors[name] = (shape, dtype, 8 + length + begin)
    return tensors


def files_hash(files: list[Path]) -> str:
    """SHA-256 over the bytes of the given files (in order), cached by path, size and mtime.

    Hashing a 6 GB checkpoint takes seconds; a study merges the same experts many times, so
    the digest of an unchanged file is remembered under the cache.
    """
    from speechmerge.cache import cache_dir
    from speechmerge.fsutil import write_file_atomically

    outer = hashlib.sha256()
    for file in files:
        stat = file.stat()
        key = hashlib.sha256(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        memo = cache_dir("hashes") / f"{key}.txt"
        if memo.is_file():
            digest = memo.read_text().strip()
        else:
            inner = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    inner.update(block)
            digest = inner.hexdigest()
            write_file_atomically(memo, digest)
        outer.update(digest.encode())
    return outer.hexdigest()
