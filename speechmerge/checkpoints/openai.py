"""openai-whisper `.pt` checkpoints (the format of OpenAI's release and of LoRS-Merging's code)
converted into Hugging Face Whisper.

A checkpoint is `{"dims": {n_mels, n_vocab, n_audio_ctx, n_audio_state, n_audio_head,
n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer}, "model_state_dict": {...}}`,
read with `torch.load(weights_only=True)` (memory-mapped): tensors only, never code.

Name map (`{i}` = block index):

| openai-whisper | Hugging Face |
|---|---|
| `encoder.conv{1,2}.*` | `model.encoder.conv{1,2}.*` |
| `encoder.positional_embedding` | `model.encoder.embed_positions.weight` |
| `{encoder,decoder}.blocks.{i}.attn.{query,key,value,out}` | `model.{...}.layers.{i}.self_attn.{q,k,v,out}_proj` |
| `decoder.blocks.{i}.cross_attn.{query,key,value,out}` | `model.decoder.layers.{i}.encoder_attn.{q,k,v,out}_proj` |
| `*.attn_ln`, `*.cross_attn_ln`, `*.mlp_ln` | `self_attn_layer_norm`, `encoder_attn_layer_norm`, `final_layer_norm` |
| `*.mlp.0`, `*.mlp.2` | `fc1`, `fc2` |
| `encoder.ln_post`, `decoder.ln` | `model.encoder.layer_norm`, `model.decoder.layer_norm` |
| `decoder.token_embedding.weight` | `model.decoder.embed_tokens.weight` (tied `proj_out`) |
| `decoder.positional_embedding` | `model.decoder.embed_positions.weight` |

The `.pt` holds no tokenizer: a multilingual model (`n_vocab` 51865) uses the built-in
model's (the same vocabulary); others need `--tokenizer DIR`.
"""

from __future__ import annotations

import re
from pathlib import Path

from speechmerge.checkpoints.converted import HFTensor
from speechmerge.checkpoints.processor import DecodingFacts, WhisperShape
from speechmerge.checkpoints.torch_files import load_tensors_only
from speechmerge.errors import SpeechmergeError

DIMS = (
    "n_mels",
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
)
MULTILINGUAL_VOCAB = 51865

_BLOCK_PARTS = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp_ln": "final_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
}
_GLOBAL = {
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
}
_BLOCK = re.compile(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)")
_MODULE = re.compile(r"(encoder\.conv1|encoder\.conv2|encoder\.ln_post|decoder\.ln)\.(weight|bias)")
_MODULES = {
    "encoder.conv1": "model.encoder.conv1",
    "encoder.conv2": "model.encoder.conv2",
    "encoder.ln_post": "model.encoder.layer_norm",
    "decoder.ln": "model.decoder.layer_norm",
}

RESAVE_HINT = (
    "re-saved as a state dict, in a Python where the file is trusted and openai-whisper is importable: "
    "m = torch.load(PATH, weights_only=False); "
    "torch.save({'dims': vars(m.dims), 'model_state_dict': m.state_dict()}, 'model_state.pt')"
)


def hf_name(name: str) -> str | None:
    """The Hugging Face name of an openai-whisper tensor (None if it has none)."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    if match := _MODULE.fullmatch(name):
        return f"{_MODULES[match.group(1)]}.{match.group(2)}"
    if (match := _BLOCK.fullmatch(name)) and match.group(3) in _BLOCK_PARTS:
        stack, index, part, kind = match.groups()
        return f"model.{stack}.layers.{index}.{_BLOCK_PARTS[part]}.{kind}"
    return None


def load_openai_checkpoint(path: Path) -> tuple[dict, dict]:
    """`(dims, state_dict)` of an openai-whisper checkpoint, loaded with weights_only=True."""
    checkpoint = load_tensors_only(
        path, f"a whole model saved with torch.save(model), as LoRS-Merging's code does, must be {RESAVE_HINT}"
    )
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise SpeechmergeError(
            f"{path}: expected an openai-whisper checkpoint {{'dims': ..., 'model_state_dict': ...}}, found {found}; a checkpoint must be {RESAVE_HINT}"
        )
    dims = dict(checkpoint["dims"])
    missing = [key for key in DIMS if key not in dims]
    if missing:
        raise SpeechmergeError(f"{path}: dims lacks {', '.join(missing)}; expected openai-whisper's ModelDimensions")
    return dims, checkpoint["model_state_dict"]


def whisper_shape(dims: dict, state: dict) -> WhisperShape:
    return WhisperShape(
        vocab_size=dims["n_vocab"],
        num_mel_bins=dims["n_mels"],
        d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"],
        encoder_attention_heads=dims["n_audio_head"],
        encoder_ffn_dim=state["encoder.blocks.0.mlp.0.weight"].shape[0],
        decoder_layers=dims["n_text_layer"],
        decoder_attention_heads=dims["n_text_head"],
        decoder_ffn_dim=state["decoder.blocks.0.mlp.0.weight"].shape[0],
        max_source_positions=dims["n_audio_ctx"],
        max_target_positions=dims["n_text_ctx"],
    )


def hf_tensors(path: Path, dims: dict, state: dict) -> tuple[list[HFTensor], WhisperShape, DecodingFacts]:
    """The Hugging Face state dict of an openai-whisper checkpoint, its shape and what it says
    about decoding (alignment heads, when the checkpoint carries them)."""
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise SpeechmergeError(
            f"{path}: n_audio_state {dims['n_audio_state']} != n_text_state {dims['n_text_state']}; HF Whisper needs one width"
        )
    tensors, facts = [], DecodingFacts()
    for name, tensor in state.items():
        if name == "alignment_heads":
            facts.alignment_heads = tensor.to_dense().nonzero().tolist()
            continue
        target = hf_name(name)
        if target is None:
            raise SpeechmergeError(
                f"{path}: tensor {name} has no Hugging Face Whisper counterpart; expected openai-whisper names"
            )
        tensors.append(HFTensor(target, tuple(tensor.shape), lambda t=tensor: t))
    for required in ("encoder.blocks.0.mlp.0.weight", "decoder.blocks.0.mlp.0.weight"):
        if required not in state:
            raise SpeechmergeError(f"{path}: tensor {required} is missing; expected a complete openai-whisper model")
    return tensors, whisper_shape(dims, state), facts


def default_tokenizer(path: Path, vocab_size: int) -> Path:
    from speechmerge.checkpoints.builtin import builtin_files

    if vocab_size != MULTILINGUAL_VOCAB:
        raise SpeechmergeError(
            f"{path}: n_vocab is {vocab_size} (not the multilingual 51865); missing tokenizer: "
            "pass --tokenizer DIR with this model's Hugging Face tokenizer.json"
        )
    return builtin_files("whisper-base").folder


def convert_openai(
    path: Path, target: Path, dtype: str = "float32", force: bool = False, tokenizer_source: Path | None = None
) -> Path:
    """Convert an openai-whisper `.pt` into a complete Hugging Face directory `target`."""
    from speechmerge.checkpoints.converted import write_hf_model
    from speechmerge.checkpoints.tokenizer import check_tokenizer, load_tokenizer, tokenizer_file

    path = Path(path)
    dims, state = load_openai_checkpoint(path)
    tensors, shape, facts = hf_tensors(path, dims, state)
    source = tokenizer_file(tokenizer_source or default_tokenizer(path, shape.vocab_size))
    tokenizer = load_tokenizer(source)
    check_tokenizer(source, tokenizer)
    if len(tokenizer) != shape.vocab_size:
        raise SpeechmergeError(
            f"{source}: {len(tokenizer)} tokens but {path} has n_vocab {shape.vocab_size}; give this model's tokenizer with --tokenizer"
        )
    return write_hf_model(target, tensors, shape, tokenizer, facts, dtype, force, source=path)


def converted_openai_dir(path: Path) -> Path:
    """An openai-whisper `.pt` converted once into the model cache (keyed by its content)."""
    from speechmerge.checkpoints.converted import convert_once, source_key
    from speechmerge.checkpoints.hf import files_hash

    path = Path(path).resolve()
    key = source_key(files_hash([path]))
    return convert_once(f"openai-{path.stem}-{key}", lambda target: convert_openai(path, target))
