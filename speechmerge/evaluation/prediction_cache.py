"""Predictions cached by (model content key, clip, language, task, decoding options).

A study evaluates the same model on the same clips many times (validation for selection,
test for the report, re-runs after a crash): each prediction is decoded once. An entry is
one small JSON file, written atomically as soon as its batch is decoded, so an interrupted
evaluation resumes where it stopped and parallel processes share entries safely.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel


class CachedDecode(BaseModel):
    """What decoding produced for one clip."""

    text: str
    language: str  # the language token the prompt used
    detected_language: Optional[str] = None


def entry_key(audio_key: str, language: Optional[str], task: str) -> str:
    """The cache key of a clip decoded for `task` in `language` (None: the detected language)."""
    return hashlib.sha256(f"{audio_key}|{language or '<detect>'}|{task}".encode()).hexdigest()


class PredictionCache:
    """The cached predictions of one model under one set of decoding options."""

    def __init__(self, model_key: str, options_key: str, root: Optional[Path] = None):
        from speechmerge.cache import cache_dir

        parts = ("predictions", model_key[:32], options_key[:16])
        self.root = Path(root).joinpath(*parts) if root is not None else cache_dir(*parts)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[CachedDecode]:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return CachedDecode.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):  # a damaged entry is decoded again
            return None

    def put(self, key: str, decoded: CachedDecode) -> None:
        from speechmerge.fsutil import write_file_atomically

        write_file_atomically(self._path(key), json.dumps(decoded.model_dump(), ensure_ascii=False))
