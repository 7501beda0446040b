"""What each Whisper tensor is, derived from the model's structure rather than name lists.

The roles come from instantiating `WhisperForConditionalGeneration` on the meta device (no
memory, no weights) and looking at the module that owns each parameter:

| role          | tensors                                                                 |
|---------------|-------------------------------------------------------------------------|
| `attention`   | 2-D q/k/v/out weights of self-attention (encoder and decoder blocks)     |
| `cross_attention` | 2-D q/k/v/out weights of the decoder's cross-attention               |
| `mlp`         | 2-D fc1/fc2 weights of the blocks                                        |
| `embedding`   | the decoder's token embedding (tied to `proj_out`)                       |
| `positional`  | encoder (sinusoidal) and decoder positional tables                      |
| `conv`        | the encoder's two 3-D Conv1d kernels                                     |
| `norm`        | LayerNorm weights and biases                                             |
| `bias`        | biases of linear and conv layers                                         |

"Block linear weights" (attention, cross_attention, mlp) are the 2-D matrices that SVD and
pruning methods act on; every other role follows each method's rule for non-matrix tensors
(docs/methods.md). LoRS-Merging's official code (Zhao, Sun, Zhang, arXiv 2502.17380;
qmgzhao/LoRS-Merging) picks them by openai-whisper names (`attn.` or `mlp.`, `weight`), which on
Hugging Face names would miss fc1/fc2 and catch the 448 x d decoder positional table under a
plain "is 2-D" test: hence roles from the model's structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

MATRIX_ROLES = frozenset({"attention", "cross_attention", "mlp"})

# Config fields that must agree between a base and its experts.
ARCHITECTURE_KEYS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "vocab_size",
    "num_mel_bins",
    "max_source_positions",
    "max_target_positions",
)

# Files a complete Hugging Face Whisper directory carries besides weights and config.
PROCESSOR_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
)

_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class TensorRole:
    """The structural facts about one Whisper tensor that merge methods may use."""

    name: str
    role: str
    component: str  # "encoder", "decoder" or "head"
    layer: int | None  # block index, None outside the blocks

    @property
    def is_block_matrix(self) -> bool:
        """True for the 2-D linear weights of attention, cross-attention and MLP blocks."""
        return self.role in MATRIX_ROLES


@dataclass(frozen=True)
class WhisperLayout:
    """Roles of every parameter of one Whisper architecture, and its tied aliases."""

    roles: dict[str, TensorRole]
    tied: dict[str, str]  # alias name -> name of the tensor it shares storage with

    def role(self, name: str) -> TensorRole:
        return self.roles[name]


def _role_of(module_type: str, module_path: str, param: str) -> str:
    if module_type == "LayerNorm":
        return "norm"
    if param == "bias":
        return "bias"
    if module_type == "Conv1d":
        return "conv"
    if module_type in ("Embedding", "WhisperPositionalEmbedding"):
        return "positional" if module_path.endswith("embed_positions") else "embedding"
    if module_type == "Linear":
        if ".encoder_attn." in module_path + ".":
            return "cross_attention"
        if ".self_attn." in module_path + ".":
            return "attention"
        if _LAYER.search(module_path + "."):
            return "mlp"
        return "embedding"  # proj_out: the output projection, tied to the token embedding
    raise ValueError(f"unexpected Whisper module {module_path} of type {module_type}")


def _derive_layout(config_items: tuple) -> WhisperLayout:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(**dict(config_items))
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    roles: dict[str, TensorRole] = {}
    for module_path, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            name = f"{module_path}.{param_name}"
            component = "encoder" if ".encoder." in f".{name}" else "decoder" if ".decoder." in f".{name}" else "head"
            match = _LAYER.search(name)
            roles[name] = TensorRole(
                name=name,
                role=_role_of(type(module).__name__, module_path, param_name),
                component=component,
                layer=int(match.group(1)) if match else None,
            )
    tied = {}
    if getattr(config, "tie_word_embeddings", True):
        tied["proj_out.weight"] = "model.decoder.embed_tokens.weight"
    return WhisperLayout(roles=roles, tied=tied)


@lru_cache(maxsize=16)
def _layout_for(config_items: tuple) -> WhisperLayout:
    """The derived layout, remembered on disk per architecture and transformers version:
    deriving it imports transformers' Whisper modelling code, seconds a process would
    otherwise spend on every merge."""
    import hashlib
    import json
    from importlib.metadata import version

    from speechmerge.cache import cache_dir
    from speechmerge.fsutil import write_file_atomically

    key = hashlib.sha256(json.dumps([version("transformers"), config_items]).encode()).hexdigest()[:32]
    memo = cache_dir("layouts") / f"{key}.json"
    if memo.is_file():
        data = json.loads(memo.read_text())
        return WhisperLayout(roles={r["name"]: TensorRole(**r) for r in data["roles"]}, tied=data["tied"])
    layout = _derive_layout(config_items)
    data = {"roles": [vars(r) for r in layout.roles.values()], "tied": layout.tied}
    write_file_atomically(memo, json.dumps(data))
    return layout


def whisper_layout(config: dict) -> WhisperLayout:
    """The layout of the Whisper architecture described by a parsed `config.json`."""
    keys = ARCHITECTURE_KEYS + ("tie_word_embeddings", "pad_token_id", "decoder_start_token_id")
    items = tuple((k, config[k]) for k in keys if k in config)
    return _layout_for(items)
