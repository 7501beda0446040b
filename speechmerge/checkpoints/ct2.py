"""CTranslate2 Whisper models (faster-whisper's format) read into Hugging Face Whisper.

`model.bin` (CTranslate2 binary version 6, spec `WhisperSpec` revision 3) is, in
little-endian order: uint32 version; string spec name; uint32 revision; uint32 count, then
per variable: string name, uint8 rank, rank x uint32 dims, uint8 dtype id (0 float32,
1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), uint32 byte count, the bytes; then
uint32 count and (alias, target) string pairs. Strings are uint16 length (with the final
NUL) + UTF-8 + NUL. A file may come split into consecutive parts (`model.bin.part1`, ...).

Quantised weights `W` come with `W_scale`: int8 rows were stored as round(W * s) with
s = 127 / max|row| (one scale per output row), int16 as round(W * s) with one s for the
tensor; both read back as W = q / s.

Variable map (D = d_model; `layer_i/...` per block):

| CTranslate2 | Hugging Face |
|---|---|
| `encoder/conv{1,2}/{weight,bias}` | `model.encoder.conv{1,2}.*` |
| `encoder/position_encodings/encodings` | `model.encoder.embed_positions.weight` |
| `*/layer_norm/{gamma,beta}` | `*.layer_norm.{weight,bias}` (and the per-block norms below) |
| `*/self_attention/linear_0` [3D, D] | `self_attn.{q,k,v}_proj` (rows 0:D, D:2D, 2D:3D) |
| `*/self_attention/linear_1` | `self_attn.out_proj` |
| `*/self_attention/layer_norm` | `self_attn_layer_norm` |
| `decoder/layer_i/attention/linear_0` | `encoder_attn.q_proj` |
| `decoder/layer_i/attention/linear_1` [2D, D] | `encoder_attn.{k,v}_proj` |
| `decoder/layer_i/attention/linear_2` | `encoder_attn.out_proj` |
| `decoder/layer_i/attention/layer_norm` | `encoder_attn_layer_norm` |
| `*/ffn/linear_{0,1}`, `*/ffn/layer_norm` | `fc1`, `fc2`, `final_layer_norm` |
| `decoder/embeddings/weight` (= `decoder/projection/weight`) | `model.decoder.embed_tokens.weight` (tied `proj_out`) |
| `decoder/position_encodings/encodings` | `model.decoder.embed_positions.weight` |

The key bias slices (CTranslate2 stores zeros there; HF's k_proj has none) are dropped:
a key bias adds q·b_k to every score of a query, which softmax cancels, so this is exact.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from speechmerge.checkpoints.converted import HFTensor
from speechmerge.checkpoints.dtypes import dtype_name
from speechmerge.checkpoints.processor import DecodingFacts, WhisperShape
from speechmerge.errors import SpeechmergeError

BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
SPEC_REVISION = 3
CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
GELU = 3  # CTranslate2's Activation enum
# Scalar settings a WhisperSpec carries besides weights; only num_heads and activation matter here.
SETTINGS = re.compile(
    r"(encoder|decoder)/(num_heads|activation|alibi|alibi_use_positive_positions|alignment_heads|alignment_layer|"
    r"pre_norm|scale_alibi|scale_embeddings|start_from_zero_embedding|layernorm_embedding|rotary_\w+|multi_query\w*)"
)


@dataclass(frozen=True)
class Ct2Variable:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int


class Ct2ModelFile:
    """The variables of a CTranslate2 `model.bin` (possibly split in parts), read on demand."""

    def __init__(self, parts: list[Path]):
        self.parts = [Path(p) for p in parts]
        self.label = str(self.parts[0]) if len(self.parts) == 1 else f"{self.parts[0]} (+{len(self.parts) - 1} parts)"
        self._sizes = [p.stat().st_size for p in self.parts]
        self.size = sum(self._sizes)
        self.variables: dict[str, Ct2Variable] = {}
        self.aliases: dict[str, str] = {}
        self._cached: tuple[str, torch.Tensor] | None = None
        self._parse()

    # -- bytes across parts -----------------------------------------------------------------
    def _require(self, end: int, what: str) -> None:
        if end > self.size:
            raise SpeechmergeError(
                f"{self.label}: truncated: {what} needs bytes up to {end} but the file has {self.size}; "
                "the model is incomplete, re-download or re-convert it"
            )

    def _read(self, offset: int, count: int, what: str) -> bytes:
        self._require(offset + count, what)
        chunks, start = [], 0
        for part, size in zip(self.parts, self._sizes):
            lo, hi = max(offset, start), min(offset + count, start + size)
            if lo < hi:
                with open(part, "rb") as handle:
                    handle.seek(lo - start)
                    chunks.append(handle.read(hi - lo))
            start += size
        return b"".join(chunks)

    def _parse(self) -> None:
        position = 0

        def take(fmt: str, what: str):
            nonlocal position
            size = struct.calcsize(fmt)
            values = struct.unpack("<" + fmt, self._read(position, size, what))
            position += size
            return values if len(values) > 1 else values[0]

        def string(what: str) -> str:
            nonlocal position
            length = take("H", what)
            raw = self._read(position, length, what)
            position += length
            return raw[:-1].decode("utf-8", errors="replace")

        version = take("I", "the header")
        if version != BINARY_VERSION:
            raise SpeechmergeError(
                f"{self.label}: CTranslate2 binary version {version}; speechmerge reads version {BINARY_VERSION} "
                "(CTranslate2 >= 3); re-convert the model with a current ct2-transformers-converter"
            )
        spec, revision = string("the spec name"), take("I", "the spec revision")
        if spec != SPEC_NAME or revision != SPEC_REVISION:
            raise SpeechmergeError(
                f"{self.label}: CTranslate2 spec {spec!r} revision {revision}; expected {SPEC_NAME!r} revision "
                f"{SPEC_REVISION} (a Whisper model); other CTranslate2 models cannot be merged as Whisper"
            )
        for _ in range(take("I", "the variable count")):
            name = string("a variable name")
            rank = take("B", f"variable {name}")
            shape = tuple(take("I", f"variable {name}") for _ in range(rank))
            dtype_id = take("B", f"variable {name}")
            nbytes = take("I", f"variable {name}")
            if dtype_id not in CT2_DTYPES:
                raise SpeechmergeError(
                    f"{self.label}: variable {name} has unknown CTranslate2 dtype id {dtype_id}; "
                    f"known: {sorted(CT2_DTYPES)} ({', '.join(dtype_name(d) for d in CT2_DTYPES.values())})"
                )
            dtype = CT2_DTYPES[dtype_id]
            expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if nbytes != expected:
                raise SpeechmergeError(
                    f"{self.label}: variable {name} {shape} {dtype} holds {nbytes} bytes, not {expected}; the file is damaged"
                )
            self._require(position + nbytes, f"variable {name}")
            self.variables[name] = Ct2Variable(name, shape, dtype, position, nbytes)
            position += nbytes
        for _ in range(take("I", "the alias count")):
            alias = string("an alias")
            self.aliases[alias] = string(f"alias {alias}")
        if position != self.size:
            raise SpeechmergeError(
                f"{self.label}: {self.size - position} unexpected bytes after the last variable; the file is damaged "
                "(or its parts are in the wrong order)"
            )

    # -- tensors ------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The stored variable behind `name` (CTranslate2 stores equal variables once, as aliases)."""
        return self.aliases.get(name, name)

    def raw(self, name: str) -> torch.Tensor:
        """A variable as stored (quantised variables stay integers)."""
        name = self.resolve(name)
        if self._cached is not None and self._cached[0] == name:
            return self._cached[1]
        var = self.variables[name]
        data = bytearray(self._read(var.offset, var.nbytes, f"variable {name}"))
        tensor = (
            torch.frombuffer(data, dtype=var.dtype).reshape(var.shape)
            if var.nbytes
            else torch.empty(var.shape, dtype=var.dtype)
        )
        self._cached = (name, tensor)
        return tensor

    def weight(self, name: str) -> torch.Tensor:
        """A weight in floating point: quantised variables divided by their `_scale`."""
        tensor = self.raw(name)
        scale_name = f"{self.resolve(name)}_scale"
        if scale_name not in self.variables:
            if not tensor.is_floating_point():
                raise SpeechmergeError(
                    f"{self.label}: variable {name} is {tensor.dtype} without {scale_name}; cannot dequantise it"
                )
            return tensor
        scale = self.raw(scale_name).float()
        if scale.numel() > 1:
            scale = scale.reshape(-1, *([1] * (tensor.dim() - 1)))
        return tensor.float() / scale

    def scalar(self, name: str) -> int:
        return int(self.raw(name).reshape(-1)[0])


def model_bin_parts(directory: Path) -> list[Path]:
    """`model.bin`, or `model.bin.part1`, `model.bin.part2`, ... in order."""
    single = directory / "model.bin"
    if single.is_file():
        return [single]
    parts = sorted(directory.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
    if not parts:
        raise SpeechmergeError(f"{directory}: no model.bin; expected a CTranslate2 Whisper model directory")
    return parts


def _count_layers(model: Ct2ModelFile, stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise SpeechmergeError(f"{model.label}: {stack} layers {sorted(indices)}; expected layer_0 ... layer_N-1")
    return len(indices)


class _Mapper:
    """Builds the HF tensor list while remembering which CTranslate2 variables were used."""

    def __init__(self, model: Ct2ModelFile):
        self.model = model
        self.used: set[str] = set()
        self.tensors: list[HFTensor] = []

    def shape(self, ct2: str) -> tuple[int, ...]:
        stored = self.model.resolve(ct2)
        if stored not in self.model.variables:
            raise SpeechmergeError(f"{self.model.label}: variable {ct2} is missing; expected a complete Whisper model")
        self.used.update({stored, f"{stored}_scale"})
        return self.model.variables[stored].shape

    def copy(self, hf: str, ct2: str) -> None:
        shape = self.shape(ct2)
        self.tensors.append(HFTensor(hf, shape, lambda: self.model.weight(ct2)))

    def rows(self, hf_names: list[str | None], ct2: str) -> None:
        """Split a fused variable into equal row blocks (None = drop that block)."""
        shape = self.shape(ct2)
        block = shape[0] // len(hf_names)
        if block * len(hf_names) != shape[0]:
            raise SpeechmergeError(
                f"{self.model.label}: variable {ct2} has {shape[0]} rows, not {len(hf_names)} equal blocks"
            )
        for index, hf in enumerate(hf_names):
            if hf is not None:
                self.tensors.append(
                    HFTensor(
                        hf, (block, *shape[1:]), lambda i=index: self.model.weight(ct2)[i * block : (i + 1) * block]
                    )
                )

    def linear(self, hf: str, ct2: str) -> None:
        self.copy(f"{hf}.weight", f"{ct2}/weight")
        self.copy(f"{hf}.bias", f"{ct2}/bias")

    def norm(self, hf: str, ct2: str) -> None:
        self.copy(f"{hf}.weight", f"{ct2}/gamma")
        self.copy(f"{hf}.bias", f"{ct2}/beta")

    def fused(self, hf_prefix: str, ct2: str, projections: tuple[str, ...]) -> None:
        self.rows([f"{hf_prefix}.{p}_proj.weight" for p in projections], f"{ct2}/weight")
        self.rows([None if p == "k" else f"{hf_prefix}.{p}_proj.bias" for p in projections], f"{ct2}/bias")

    def block(self, hf: str, ct2: str, cross: bool) -> None:
        self.norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        self.fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q", "k", "v"))
        self.linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        if cross:
            self.norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
            self.linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
            self.fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k", "v"))
            self.linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
        self.norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        self.linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        self.linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")


def hf_tensors(model: Ct2ModelFile) -> tuple[list[HFTensor], WhisperShape]:
    """The Hugging Face state dict of a CTranslate2 Whisper model (lazy) and its architecture."""
    encoder_layers, decoder_layers = _count_layers(model, "encoder"), _count_layers(model, "decoder")
    if "decoder/activation" in model.variables and model.scalar("decoder/activation") != GELU:
        raise SpeechmergeError(f"{model.label}: decoder activation is not GELU; this is not a Whisper model")
    mapper = _Mapper(model)
    mapper.linear("model.encoder.conv1", "encoder/conv1")
    mapper.linear("model.encoder.conv2", "encoder/conv2")
    mapper.copy("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings")
    for i in range(encoder_layers):
        mapper.block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    mapper.norm("model.encoder.layer_norm", "encoder/layer_norm")
    mapper.copy("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    mapper.copy("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    for i in range(decoder_layers):
        mapper.block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    mapper.norm("model.decoder.layer_norm", "decoder/layer_norm")
    unknown = sorted(n for n in model.variables if n not in mapper.used and not SETTINGS.fullmatch(n))
    if unknown:
        raise SpeechmergeError(
            f"{model.label}: variable {unknown[0]} (and {len(unknown) - 1} more) has no Hugging Face Whisper counterpart; "
            "this WhisperSpec variant is not supported"
        )
    for name in ("encoder/num_heads", "decoder/num_heads"):
        mapper.shape(name)
    vocab_size, d_model = mapper.shape("decoder/embeddings/weight")
    shape = WhisperShape(
        vocab_size=vocab_size,
        num_mel_bins=mapper.shape("encoder/conv1/weight")[1],
        d_model=d_model,
        encoder_layers=encoder_layers,
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        encoder_ffn_dim=mapper.shape("encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_layers=decoder_layers,
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        decoder_ffn_dim=mapper.shape("decoder/layer_0/ffn/linear_0/weight")[0],
        max_source_positions=mapper.shape("encoder/position_encodings/encodings")[0],
        max_target_positions=mapper.shape("decoder/position_encodings/encodings")[0],
    )
    return mapper.tensors, shape


def decoding_facts(config_path: Path) -> DecodingFacts:
    """Language ids, suppressed tokens and alignment heads from CTranslate2's `config.json`."""
    if not config_path.is_file():
        return DecodingFacts()
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise SpeechmergeError(f"{config_path}: not valid JSON ({error}); the file is damaged") from None
    return DecodingFacts(
        lang_ids=config.get("lang_ids"),
        suppress_tokens=config.get("suppress_ids"),
        begin_suppress_tokens=config.get("suppress_ids_begin"),
        alignment_heads=config.get("alignment_heads"),
    )


def check_vocabulary(directory: Path, tokenizer, vocab_size: int) -> None:
    """The tokenizer must spell every id as CTranslate2's `vocabulary.json` (or .txt) does."""
    json_file, text_file = directory / "vocabulary.json", directory / "vocabulary.txt"
    if json_file.is_file():
        tokens, source = json.loads(json_file.read_text(encoding="utf-8")), json_file
    elif text_file.is_file():
        tokens, source = text_file.read_text(encoding="utf-8").split("\n")[:vocab_size], text_file
    else:
        return
    if len(tokens) != vocab_size:
        raise SpeechmergeError(
            f"{source}: {len(tokens)} tokens but the model has {vocab_size}; the files belong to different models"
        )
    ours = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    for index, (theirs, mine) in enumerate(zip(tokens, ours)):
        if theirs != mine:
            raise SpeechmergeError(
                f"{source}: id {index} is {theirs!r} but the tokenizer says {mine!r}; "
                "the tokenizer belongs to another model, give the right one with --tokenizer"
            )


@dataclass(frozen=True)
class Ct2Files:
    """Where a CTranslate2 Whisper model's pieces are: model.bin (or its parts), and the
    folder holding config.json, vocabulary.json and tokenizer.json."""

    parts: tuple[Path, ...]
    folder: Path

    @classmethod
    def of_directory(cls, directory: Path) -> Ct2Files:
        directory = Path(directory)
        return cls(tuple(model_bin_parts(directory)), directory)


def convert_ct2(
    files: Ct2Files, target: Path, dtype: str = "float32", force: bool = False, tokenizer_source: Path | None = None
) -> Path:
    """Convert a CTranslate2 Whisper model into a complete Hugging Face directory `target`."""
    from speechmerge.checkpoints.converted import write_hf_model
    from speechmerge.checkpoints.tokenizer import check_tokenizer, load_tokenizer, tokenizer_file

    model = Ct2ModelFile(list(files.parts))
    tensors, shape = hf_tensors(model)
    source = tokenizer_file(tokenizer_source or files.folder)
    tokenizer = load_tokenizer(source)
    check_tokenizer(source, tokenizer)
    if len(tokenizer) != shape.vocab_size:
        raise SpeechmergeError(
            f"{source}: {len(tokenizer)} tokens but {model.label} has {shape.vocab_size}; "
            "the tokenizer belongs to another model, give the right one with --tokenizer"
        )
    check_vocabulary(files.folder, tokenizer, shape.vocab_size)
    facts = decoding_facts(files.folder / "config.json")
    return write_hf_model(target, tensors, shape, tokenizer, facts, dtype, force, source=model.label)


def converted_ct2_dir(directory: Path) -> Path:
    """A CTranslate2 directory converted once into the model cache (keyed by its content)."""
    from speechmerge.checkpoints.converted import convert_once, source_key
    from speechmerge.checkpoints.hf import files_hash

    files = Ct2Files.of_directory(Path(directory).resolve())
    side = [p for p in (files.folder / n for n in ("config.json", "tokenizer.json", "vocabulary.json")) if p.is_file()]
    key = source_key(files_hash(list(files.parts) + side))
    return convert_once(f"ct2-{files.folder.name}-{key}", lambda target: convert_ct2(files, target))
