"""Reading PyTorch `.pt` / `.bin` files safely: tensors only, never code.

`torch.load(weights_only=True)` refuses pickled Python objects (a pickle can run arbitrary
code); the file is memory-mapped where its format allows, so tensors are read on use.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from speechmerge.errors import SpeechmergeError


def load_tensors_only(path: Path, pickled_hint: str):
    """The object in `path`, loaded with weights_only=True; `pickled_hint` says what to do
    when the file holds pickled objects instead of plain tensors and containers."""
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SpeechmergeError(
            f"{path}: holds pickled Python objects, which speechmerge does not unpickle (weights_only=True); {pickled_hint}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise SpeechmergeError(
            f"{path}: unreadable PyTorch checkpoint ({error}); the file is damaged or truncated"
        ) from None
