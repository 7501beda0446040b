"""The dtype tables of speechmerge: names used in recipes and cards, and safetensors' codes."""

from __future__ import annotations

import torch

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


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32, and so on for every dtype (the name torch prints, unprefixed)."""
    return str(dtype).removeprefix("torch.")
