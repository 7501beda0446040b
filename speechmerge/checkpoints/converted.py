"""Writing a converted model as a complete Hugging Face Whisper directory, and doing it once.

Converters (CTranslate2, openai-whisper) describe the target state dict lazily (name, shape,
how to load); `write_hf_model` streams it through the project's safetensors writer into a
temporary directory that replaces the target only when complete. `convert_once` keeps one
converted copy per source under the model cache, built under a file lock so that parallel
processes neither convert twice nor see a half-written directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speechmerge.errors import SpeechmergeError

# The dtypes a conversion writes (float64 would double the size of weights trained in float32).
DTYPES = ("float32", "float16", "bfloat16")
SHARD_BYTES = 2 * 1024**3
# Bump when the conversion output changes, so cached copies are rebuilt.
CONVERTER_VERSION = "1"


@dataclass(frozen=True)
class HFTensor:
    """One tensor of a converted Hugging Face state dict: its name, shape and how to load it."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], object]


def models_dir() -> Path:
    """Where converted models live: `$SPEECHMERGE_MODEL_CACHE`, else `cache_dir("models")`.

    The separate variable lets tests keep a private cache yet share the (slow to build)
    converted built-in model with the user's cache."""
    from speechmerge.cache import cache_dir

    override = os.environ.get("SPEECHMERGE_MODEL_CACHE")
    if override:
        path = Path(override)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir("models")


def check_state_names(tensors: list[HFTensor], config, source) -> None:
    """The converted names must be exactly the parameters of `WhisperForConditionalGeneration`
    (less the tied `proj_out`), so that the model loads strictly."""
    from speechmerge.checkpoints.whisper import whisper_layout

    layout = whisper_layout(config.to_dict())
    expected = set(layout.roles) - set(layout.tied)
    names = [t.name for t in tensors]
    missing, unexpected = sorted(expected - set(names)), sorted(set(names) - expected)
    if missing or unexpected or len(names) != len(set(names)):
        what = (
            f"no tensor for {missing[0]}"
            if missing
            else f"unexpected tensor {unexpected[0]}"
            if unexpected
            else "duplicate tensors"
        )
        raise SpeechmergeError(
            f"{source}: {what} ({len(missing)} missing, {len(unexpected)} unexpected); the checkpoint is incomplete or not Whisper"
        )


def write_hf_model(
    target: Path,
    tensors: list[HFTensor],
    shape,
    tokenizer,
    facts,
    dtype: str = "float32",
    force: bool = False,
    source="source",
) -> Path:
    """Write `tensors` with config, generation config, tokenizer and feature extractor into
    `target`, atomically; `source` names the input in errors."""
    from speechmerge.checkpoints.dtypes import float_dtype
    from speechmerge.checkpoints.processor import whisper_config, write_model_files
    from speechmerge.checkpoints.writer import StreamingSafetensorsWriter, TensorSlot
    from speechmerge.fsutil import atomic_directory
    from speechmerge.progress import progress_bar

    out_dtype = float_dtype(dtype, choices=DTYPES)
    config = whisper_config(shape, tokenizer)
    config.dtype = dtype
    check_state_names(tensors, config, source)
    slots = [TensorSlot(t.name, tuple(t.shape), out_dtype) for t in tensors]
    with atomic_directory(Path(target), force=force) as tmp:
        writer = StreamingSafetensorsWriter(tmp, slots, SHARD_BYTES, metadata={"converted_by": "speechmerge"})
        try:
            with progress_bar(transient=True) as bar:
                for item in bar.track(tensors, description=f"converting to {Path(target).name}"):
                    writer.write(item.name, item.load().to(out_dtype))
            writer.close()
        finally:
            writer.abort()
        write_model_files(tmp, config, tokenizer, facts)
    return Path(target)


def source_key(*parts: str | Path) -> str:
    """A short digest naming one conversion: its inputs' identity plus the converter version."""
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    for part in parts:
        digest.update(b"\0" + str(part).encode())
    return digest.hexdigest()[:16]


def convert_once(name: str, build: Callable[[Path], None]) -> Path:
    """The cached directory `models_dir()/name`, built by `build(target)` if absent.

    `build` must write `target` atomically (as `write_hf_model` does); the lock makes other
    processes wait for it instead of converting again."""
    from filelock import FileLock

    root = models_dir()
    target = root / name
    if (target / "config.json").is_file():
        return target
    with FileLock(str(root / f".{name}.lock")):
        if not (target / "config.json").is_file():
            build(target)
    return target
