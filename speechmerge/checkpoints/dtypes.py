"""The dtype tables of speechmerge: names used in recipes and cards, and safetensors' codes."""

from __future__ import annotations

import torch

from speechmerge.errors import SpeechmergeError

# Float dtypes by the names recipes, model cards and conversions use.
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}

# safetensors header codes (the format's own spelling) for every dtype a checkpoint may hold.
SAFETENSORS_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPE_BY_CODE: dict[str, torch.dtype] = {code: dtype for dtype, code in SAFETENSORS_CODES.items()}


def float_dtype(name: str, where: str = "dtype", choices: tuple[str, ...] = tuple(FLOAT_DTYPES)) -> torch.dtype:
    """The torch dtype called `name`, one of `choices` (names in FLOAT_DTYPES); `where` names the
    setting in the error."""
    if name not in choices:
        raise SpeechmergeError(f"{where} {name!r}: expected one of {', '.join(choices)}")
    return FLOAT_DTYPES[name]


def dtype_from_code(code: str, file, name: str) -> torch.dtype:
    """The torch dtype of safetensors code `code` (tensor `name` of `file`, named in the error)."""
    if code not in DTYPE_BY_CODE:
        raise SpeechmergeError(f"{file}: tensor {name} has dtype {code}, which speechmerge cannot merge")
    return DTYPE_BY_CODE[code]


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32, and so on for every dtype (the name torch prints, unprefixed)."""
    return str(dtype).removeprefix("torch.")
