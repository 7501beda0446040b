"""The safetensors reader refuses what it cannot read, and no format module imports the dispatcher."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from speechmerge.checkpoints import hf
from speechmerge.checkpoints.hf import parse_safetensors_header
from speechmerge.errors import SpeechmergeError


def write_safetensors(path: Path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)


def test_a_dtype_speechmerge_cannot_merge_is_named_with_file_and_tensor(tmp_path):
    file = tmp_path / "model.safetensors"
    write_safetensors(file, {"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0")
    with pytest.raises(SpeechmergeError, match=r"model\.safetensors: tensor w has dtype F8_E4M3"):
        parse_safetensors_header(file)


def test_the_header_gives_shape_dtype_and_absolute_offset(tmp_path):
    import torch

    file = tmp_path / "model.safetensors"
    header = {
        "a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
        "b": {"dtype": "F32", "shape": [1, 2], "data_offsets": [6, 14]},
    }
    write_safetensors(file, header, bytes(14))
    start = 8 + len(json.dumps(header).encode())
    assert parse_safetensors_header(file) == {
        "a": ((3,), torch.bfloat16, start),
        "b": ((1, 2), torch.float32, start + 6),
    }


def test_no_format_module_imports_the_reference_dispatcher():
    """checkpoints/resolve.py imports the formats; a format importing it back would be a cycle."""
    folder = Path(hf.__file__).parent
    importers = []
    for module in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "speechmerge.checkpoints.resolve":
                importers.append(module.name)
    assert set(importers) <= {"convert.py"}  # the `speechmerge convert` command, which nothing imports
