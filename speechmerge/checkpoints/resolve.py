"""Any model reference -> a local Hugging Face Whisper directory -> a `Checkpoint`.

`open_checkpoint(spec)` accepts:

- a Hugging Face Whisper directory (read by `checkpoints.hf.HFCheckpoint`);
- `builtin:whisper-base` (converted once into the cache; `checkpoints.builtin`);
- a CTranslate2 model directory or an openai-whisper `.pt` file (converted once into the cache);
- a PEFT LoRA adapter directory, as an expert of a given base (`checkpoints.lora`);
- a Hugging Face Hub id, resolved through the normal HF cache (offline when `HF_HUB_OFFLINE=1`).

It imports the format modules; they never import it back (tests/test_formats_hf.py checks this).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from speechmerge.checkpoints.hf import HFCheckpoint
from speechmerge.errors import SpeechmergeError


class Checkpoint(Protocol):
    """What the merge engine needs from any source of weights."""

    path: Path
    label: str
    config: dict

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str): ...

    def get(self, name: str): ...

    def read_into(self, name: str, out, rows: tuple[int, int] | None = None) -> None: ...

    def content_hash(self) -> str: ...


def resolve_model_dir(spec: str | Path) -> Path:
    """Turn a model reference into a local Hugging Face Whisper directory.

    Built-in names, CTranslate2 directories and openai-whisper `.pt` files are converted once
    into the cache; hub ids are looked up in the HF cache (downloaded only when online).
    """
    text = str(spec)
    if text.startswith("builtin:"):
        from speechmerge.checkpoints.builtin import builtin_model_dir

        return builtin_model_dir(text.removeprefix("builtin:"))
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".pt":
        from speechmerge.checkpoints.openai import converted_openai_dir

        return converted_openai_dir(path)
    if path.is_dir():
        if (path / "model.bin").is_file():  # CTranslate2's single weights file
            from speechmerge.checkpoints.ct2 import converted_ct2_dir

            return converted_ct2_dir(path)
        return path  # HFCheckpoint explains what is missing
    if path.exists():
        raise SpeechmergeError(f"{path}: not a model directory or an openai-whisper .pt file")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _hub_snapshot(text)
    raise SpeechmergeError(
        f"{path}: no such file or directory; give a model directory, a .pt file, a hub id or builtin:whisper-base"
    )


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache: try the network unless offline
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SpeechmergeError(
            f"{repo_id}: not in the Hugging Face cache and HF_HUB_OFFLINE=1; download it first or give a local directory"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # noqa: BLE001 - hub errors come in many types
        raise SpeechmergeError(
            f"{repo_id}: neither a local path nor a reachable Hugging Face Hub model ({type(error).__name__}); "
            "check the name or give a local directory"
        ) from None


def open_checkpoint(spec: str | Path, label: str | None = None, base: Checkpoint | None = None) -> Checkpoint:
    """Open any supported model reference for lazy per-tensor reading.

    A PEFT LoRA adapter directory needs `base`: its tensors are then base + B·A·scaling.
    """
    directory = resolve_model_dir(spec)
    if (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file():
        if base is None:
            raise SpeechmergeError(f"{directory}: a LoRA adapter can be merged only as an expert of a base model")
        from speechmerge.checkpoints.lora import LoraExpert

        return LoraExpert(directory, base, label=label)
    return HFCheckpoint(directory, label=label or Path(str(spec)).name)
