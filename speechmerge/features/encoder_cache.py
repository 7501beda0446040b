"""Encoder outputs computed once per clip and reused by every model that shares the encoder.

Experts fine-tuned with a frozen encoder, and every merge of them (their encoder task vectors
are all zero), have the base's encoder bit for bit. Whisper's encoder always reads 30 s of
padded audio and is most of the CPU cost of decoding, so its output for a clip is stored once
and every such model runs only its decoder.

The cache is exact: an entry is the float32 tensor the encoder returned, stored losslessly
(safetensors), under a key made of

- `encoder_key`: SHA-256 over the name, shape and float32 bytes of every encoder tensor (the
  same for a directory and for the loaded module, whatever dtype the file stores);
- the feature extractor's settings (`WhisperFeatureExtractor.to_json_string()`), the torch
  version and the device type (kernels differ between builds and devices);
- the clip: SHA-256 of its audio file's bytes.

The same cache holds the output of the encoder's frozen lower part for training mode
`top_encoder` (the hidden states that enter encoder layer n, i.e. `hidden_states[n]` of
transformers' encoder): there `encoder_key` is `lower_encoder_key`, SHA-256 over the index n
and the tensors below layer n (the convolutions, positions and layers 0 .. n-1), so experts
that share a base and n share the entries, and a change of n or of any lower weight misses.

Entries are written atomically (temp file + rename), so parallel processes can share the cache.
One entry holds 1500 x d_model float32 values: 3 MB for whisper-base, 4.6 MB for whisper-small;
the cache holds at most one entry per clip per (encoder part, feature settings, build).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from speechmerge.fsutil import write_file_atomically

if TYPE_CHECKING:
    import torch

ENCODER_PREFIX = "model.encoder."
ENTRY = "encoder_output"


def tensors_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over (name, shape, float32 bytes) of tensors, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}|{tuple(values.shape)}|".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def directory_encoder_key(model_dir: Path, model_key: Optional[str] = None) -> str:
    """The encoder key of a Whisper directory's encoder weights, memoised under its content hash."""
    return _memoised_key(model_dir, model_key, None)


def lower_encoder_key(model_dir: Path, first_top_layer: int, model_key: Optional[str] = None) -> str:
    """The key of the encoder part below layer `first_top_layer` of a Whisper directory (memoised)."""
    return _memoised_key(model_dir, model_key, first_top_layer)


def below_layer(name: str, first_top_layer: int) -> bool:
    """Whether an encoder tensor name (without the `model.encoder.` prefix) lies below layer n:
    not layer n or above, and not the final layer norm."""
    parts = name.split(".")
    if parts[0] == "layer_norm":
        return False
    return not (parts[0] == "layers" and int(parts[1]) >= first_top_layer)


def _memoised_key(model_dir: Path, model_key: Optional[str], first_top_layer: Optional[int]) -> str:
    from speechmerge.cache import cache_dir
    from speechmerge.checkpoints.hf import HFCheckpoint

    checkpoint = HFCheckpoint(Path(model_dir))
    model_key = model_key or checkpoint.content_hash()
    part = "" if first_top_layer is None else f"-below{first_top_layer}"
    memo = cache_dir("encoder-keys") / f"{model_key}{part}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    names = [name.removeprefix(ENCODER_PREFIX) for name in checkpoint.names() if name.startswith(ENCODER_PREFIX)]
    if first_top_layer is not None:
        names = [name for name in names if below_layer(name, first_top_layer)]
    key = tensors_digest((name, checkpoint.get(ENCODER_PREFIX + name)) for name in names)
    checkpoint.close()
    if first_top_layer is not None:
        key = hashlib.sha256(f"input of encoder layer {first_top_layer}|{key}".encode()).hexdigest()
    write_file_atomically(memo, key)
    return key


def clip_key(audio: Path) -> str:
    """SHA-256 of the audio file's bytes (memoised by path, size and mtime)."""
    from speechmerge.checkpoints.hf import files_hash

    return files_hash([Path(audio)])


class EncoderOutputCache:
    """Encoder outputs of one encoder (and feature extractor) on this torch build, per clip."""

    def __init__(self, encoder_key: str, extractor_settings: str, device: str = "cpu", root: Optional[Path] = None):
        import torch

        from speechmerge.cache import cache_dir

        identity = "|".join((encoder_key, extractor_settings, torch.__version__, device))
        self.key = hashlib.sha256(identity.encode()).hexdigest()[:32]
        self.root = Path(root) / self.key if root is not None else cache_dir("encoder-outputs", self.key)
        self.hits = 0
        self.misses = 0

    def path(self, clip: str) -> Path:
        return self.root / clip[:2] / f"{clip}.safetensors"

    def load(self, clip: str) -> Optional[torch.Tensor]:
        """The stored output [frames, d_model] of a clip, or None."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(clip)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensor = load_file(path)[ENTRY]
        except (SafetensorError, KeyError, OSError):  # damaged entry: recompute it
            self.misses += 1
            return None
        self.hits += 1
        return tensor

    def store(self, clip: str, output: torch.Tensor) -> None:
        from safetensors.torch import save

        write_file_atomically(self.path(clip), save({ENTRY: output.detach().to("cpu").contiguous()}))


def encode_clips(
    encode: Callable[[torch.Tensor], torch.Tensor],
    features: Callable[[Sequence[Path]], torch.Tensor],
    audio: Sequence[Path],
    cache: Optional[EncoderOutputCache] = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Encoder outputs [len(audio), frames, d_model] of clips, from the cache where present.

    `features(paths)` turns audio files into log-mel features [n, mels, 3000]; `encode(features)`
    runs the encoder (e.g. `lambda x: model.model.encoder(x).last_hidden_state` under no_grad).
    Clips missing from the cache are encoded `batch_size` at a time and stored."""
    import torch

    keys = [clip_key(path) for path in audio] if cache is not None else [None] * len(audio)
    outputs: list[Optional[torch.Tensor]] = [cache.load(key) if cache is not None else None for key in keys]
    missing = [index for index, output in enumerate(outputs) if output is None]
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        with torch.no_grad():
            encoded = encode(features([audio[index] for index in chunk]))
        for row, index in enumerate(chunk):
            outputs[index] = encoded[row]
            if cache is not None:
                cache.store(keys[index], encoded[row])
    return torch.stack(outputs)
