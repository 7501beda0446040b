"""Study jobs and their content-addressed keys.

A job's key is the SHA-256 of everything its output depends on: its kind, the identities of its
input models (a trained expert's identity is its training job's key; a given model's is its
weights' content hash), the digests of the data it reads, its settings, and the versions of
speechmerge, torch and transformers. Same key, same work: a finished key is never run again; a
changed setting changes the keys of exactly the jobs that depend on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

LEARNED_KINDS = ("search", "adamerging")  # jobs that learn a model's coefficients (a study's search:, adamerging:)


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import torch
    import transformers

    import speechmerge

    return {
        "speechmerge": speechmerge.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def job_key(kind: str, **parts: Any) -> str:
    payload = {"kind": kind, "versions": versions(), **parts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    """One unit of work: a task name and its JSON-able spec, with the labels the store keeps."""

    key: str
    kind: str  # expert | baseline | statistics | evaluate | validate | test | search | adamerging
    name: str
    task: str
    spec: dict
    stage: str | None = None
    model_kind: str | None = None
    model: str | None = None
    method: str | None = None
    setting: dict = field(default_factory=dict)
    depends: tuple[str, ...] = ()

    def record(self) -> dict:
        return {
            "key": self.key,
            "kind": self.kind,
            "name": self.name,
            "stage": self.stage,
            "model_kind": self.model_kind,
            "model": self.model,
            "method": self.method,
            "setting": self.setting,
            "spec": self.spec,
            "versions": versions(),
        }
