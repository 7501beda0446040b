"""A PEFT LoRA adapter seen as a full checkpoint: base + the adapter's dense update.

For a module with adapter matrices A (r x in) and B (out x r) the merged weight is
W + ΔW with ΔW = B·A·s (Hu et al. 2021, "LoRA"), where s = alpha / r, or alpha / sqrt(r)
with rank-stabilised LoRA (Kalajdzievski 2023, `use_rslora`). r is the module's own rank
(the rows of its A; PEFT's `rank_pattern`), alpha its own (`alpha_pattern`, matched as
PEFT does: a pattern matches a module name that equals it or ends in "." + it). With
`fan_in_fan_out` the stored weight is the transpose, so ΔW is transposed too. Embeddings
store A (r x vocab) and B (dim x r): ΔW = (B·A)ᵀ·s. Conv1d stores A (r x in x k) and
B (out x r x 1): ΔW[o, i, k] = Σ_r B[o, r] A[r, i, k] · s.

Tensors the adapter saves whole (`modules_to_save`, and `base_layer` copies of embeddings
with `save_embedding_layers`) replace the base's. Everything is read lazily: `get(name)`
loads one base tensor and that module's two adapter matrices, nothing else.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from speechmerge.errors import SpeechmergeError

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"(.+)\.(lora_A|lora_B)\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)")
UNSUPPORTED = {
    "use_dora": "DoRA adapters (use_dora) rescale the merged weight by a learned magnitude",
    "lora_bias": "adapters with a trained bias (lora_bias)",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable token indices",
}


def pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override: the first pattern p with module == p or ending in '.p'."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


class LoraExpert:
    """A LoRA adapter directory as a `Checkpoint`: `get(name)` = base tensor + B·A·scaling."""

    def __init__(self, directory: Path, base, label: str | None = None):
        self.path = Path(directory)
        self.label = label or self.path.name
        self.base = base
        self.config = base.config
        self.adapter = self._read_adapter_config()
        self._weights_file = self._find_weights()
        self._handle = None
        self._modules: dict[str, dict[str, str]] = {}  # base tensor name -> {kind, A: key, B: key}
        self._replaced: dict[str, str] = {}  # base tensor name -> adapter key holding it whole
        self._index()

    # -- reading the adapter -----------------------------------------------------------------
    def _read_adapter_config(self) -> dict:
        path = self.path / "adapter_config.json"
        try:
            adapter = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SpeechmergeError(
                f"{path}: unreadable adapter config ({error}); expected a PEFT LoRA adapter"
            ) from None
        if adapter.get("peft_type", "LORA") != "LORA":
            raise SpeechmergeError(
                f"{path}: peft_type is {adapter.get('peft_type')!r}; speechmerge merges LoRA adapters only"
            )
        for key, what in UNSUPPORTED.items():
            if adapter.get(key):
                raise SpeechmergeError(
                    f"{path}: {what} cannot be turned into a plain task vector; merge it with PEFT's merge_and_unload() and give the merged model"
                )
        return adapter

    def _find_weights(self) -> Path:
        for name in ADAPTER_FILES:
            if (self.path / name).is_file():
                return self.path / name
        raise SpeechmergeError(f"{self.path}: no {' or '.join(ADAPTER_FILES)}; the adapter directory is incomplete")

    def _keys_and_shapes(self) -> dict[str, tuple[int, ...]]:
        if self._weights_file.suffix == ".safetensors":
            handle = self._safe()
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        return {key: tuple(t.shape) for key, t in self._bin().items()}

    def _safe(self):
        if self._handle is None:
            from safetensors import SafetensorError, safe_open

            try:
                self._handle = safe_open(str(self._weights_file), framework="pt", device="cpu")
            except (SafetensorError, OSError) as error:
                raise SpeechmergeError(
                    f"{self._weights_file}: corrupt or truncated safetensors file ({error})"
                ) from None
        return self._handle

    def _bin(self) -> dict:
        if self._handle is None:
            from speechmerge.checkpoints.torch_files import load_tensors_only

            self._handle = load_tensors_only(
                self._weights_file, "re-save the adapter with PEFT's save_pretrained() (safetensors)"
            )
        return self._handle

    def _tensor(self, key: str):
        return self._safe().get_tensor(key) if self._weights_file.suffix == ".safetensors" else self._bin()[key]

    def _base_name(self, module: str, leaf: str = "weight") -> str:
        """The base tensor a PEFT module path refers to (adapters made on WhisperModel lack `model.`)."""
        for candidate in (f"{module}.{leaf}", f"model.{module}.{leaf}"):
            if candidate in self._base_names:
                return candidate
        raise SpeechmergeError(
            f"{self._weights_file}: the adapter changes {module}, which base {self.base.path} does not have; "
            f"this adapter was made for another base model ({self.adapter.get('base_model_name_or_path')})"
        )

    def _index(self) -> None:
        self._base_names = set(self.base.names())
        shapes = self._keys_and_shapes()
        for key in shapes:
            if not key.startswith(PREFIX):
                raise SpeechmergeError(
                    f"{self._weights_file}: tensor {key} does not start with {PREFIX!r}; expected a PEFT adapter"
                )
            inner = key.removeprefix(PREFIX)
            if match := _LORA_KEY.fullmatch(inner):
                module = match.group(1) or match.group(3)
                side = (match.group(2) or match.group(4))[-1]
                kind = "embedding" if match.group(4) else "linear"
                self._modules.setdefault(self._base_name(module), {"kind": kind})[side] = key
            else:
                module, _, leaf = inner.rpartition(".")
                name = self._base_name(module.removesuffix(".base_layer").removesuffix(".modules_to_save"), leaf)
                self._replaced[name] = key
                if shapes[key] != tuple(self.base.shape(name)):
                    self._shape_error(name, shapes[key])
        for name, parts in self._modules.items():
            if "A" not in parts or "B" not in parts:
                raise SpeechmergeError(
                    f"{self._weights_file}: {name} has only one of its two LoRA matrices; the adapter is damaged"
                )
            self._check_shape(name, parts["kind"], shapes[parts["A"]], shapes[parts["B"]])

    def _check_shape(self, name: str, kind: str, a: tuple[int, ...], b: tuple[int, ...]) -> None:
        if kind == "embedding":
            delta = (a[1], b[0])
        elif len(a) == 2:
            delta = (a[1], b[0]) if self.adapter.get("fan_in_fan_out") else (b[0], a[1])
        else:
            delta = (b[0], *a[1:])
        if a[0] != b[1] or delta != tuple(self.base.shape(name)):
            self._shape_error(name, delta)

    def _shape_error(self, name: str, shape) -> None:
        raise SpeechmergeError(
            f"{self._weights_file}: {name} would change a {tuple(self.base.shape(name))} tensor by a {tuple(shape)} update; "
            f"this adapter was made for another base model ({self.adapter.get('base_model_name_or_path')}), "
            f"not {self.base.path}"
        )

    # -- the update -----------------------------------------------------------------------------
    def scaling(self, name: str, rank: int) -> float:
        """alpha / r (or alpha / sqrt(r) with rslora) for the module owning tensor `name`."""
        module = name.rsplit(".", 1)[0]
        alpha = pattern_value(self.adapter.get("alpha_pattern") or {}, module, self.adapter.get("lora_alpha", 8))
        return alpha / math.sqrt(rank) if self.adapter.get("use_rslora") else alpha / rank

    def delta(self, name: str):
        """ΔW for base tensor `name` in float32 (None where the adapter leaves it alone)."""
        import torch

        if name not in self._modules:
            return None
        parts = self._modules[name]
        a, b = self._tensor(parts["A"]).float(), self._tensor(parts["B"]).float()
        scale = self.scaling(name, a.shape[0])
        if parts["kind"] == "embedding":
            return (b @ a).T * scale
        if a.dim() == 3:  # Conv1d: B has kernel size 1
            return torch.einsum("or,rik->oik", b[..., 0], a) * scale
        update = b @ a
        return (update.T if self.adapter.get("fan_in_fan_out") else update) * scale

    # -- the Checkpoint interface ------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str):
        """The base's dtype; float32 where the adapter adds an update to a lower-precision tensor
        (rounding base + ΔW back to float16 would erase most of a small ΔW)."""
        import torch

        stored = self.base.dtype(name)
        return torch.float32 if name in self._modules and stored in (torch.float16, torch.bfloat16) else stored

    def get(self, name: str):
        tensor = self._tensor(self._replaced[name]) if name in self._replaced else self.base.get(name)
        update = self.delta(name)
        if update is None:
            return tensor.to(self.dtype(name))
        return (tensor.float() + update).to(self.dtype(name))

    def read_into(self, name: str, out, rows: tuple[int, int] | None = None) -> None:
        tensor = self.get(name)
        out.copy_(tensor if rows is None else tensor[rows[0] : rows[1]])

    def content_hash(self) -> str:
        import hashlib

        from speechmerge.checkpoints.hf import files_hash

        own = files_hash([self.path / "adapter_config.json", self._weights_file])
        return hashlib.sha256(f"{own}|{self.base.content_hash()}".encode()).hexdigest()
