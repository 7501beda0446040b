"""Statistics on disk: one folder per (model content hash, data hash, settings) under the cache.

    <cache>/statistics/<key>/
        grams-<pass>.safetensors   gram/<weight name>   float32 [in, in]  Σ over counted rows of x xᵀ
        fisher.safetensors         fisher/<param name>  float32, the parameter's shape
        statistics.json            `StatisticsRecord`: settings, hashes, utterance ids, and for each
                                   linear weight the file and tensor holding its Gram matrix and its row count N

Gram matrices gathered in several passes (to bound memory) land in one file per pass.
Weights whose layers read the same input (q/k/v; every layer's cross-attention k/v) point to one
stored Gram matrix. A folder appears whole (temp folder + rename) or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import PositiveInt

from speechmerge.errors import SpeechmergeError
from speechmerge.validation import Strict

FORMAT = 1
FISHER_FILE = "fisher.safetensors"
RECORD = "statistics.json"
STATISTICS = ("gram", "fisher")
EMPIRICAL_FISHER = (
    "empirical: mean over utterances of (∂/∂θ Σ_reference tokens log p(token | prefix, audio))², "
    "the references being the utterances' transcripts or translations"
)


class StatisticsSettings(Strict):
    """What to gather and on how many utterances (part of the cache key)."""

    statistics: tuple[Literal["gram", "fisher"], ...] = STATISTICS
    utterances: Optional[PositiveInt] = None  # sample this many (seeded); None: all
    seed: int = 0
    batch_size: PositiveInt = 8  # utterances per forward when only Gram matrices are gathered
    fisher: Literal["empirical"] = "empirical"


class GramEntry(Strict):
    file: str  # grams-<pass>.safetensors
    tensor: str  # its key there
    rows: int  # N: input rows summed into it


class StatisticsRecord(Strict):
    """statistics.json."""

    format: int = FORMAT
    model_hash: str
    model_hash_of: Literal["weight files", "tensors"]
    data_hash: str
    settings: StatisticsSettings
    parts: Literal["decoder", "model"]  # decoder: the encoder is the base's, so only decoder weights have statistics
    utterances: list[str]
    tokens: int  # reference tokens (and <|endoftext|>) scored
    fisher: Optional[str] = None
    grams: dict[str, GramEntry] = {}
    fishers: list[str] = []
    seconds: float


class Statistics:
    """An expert's statistics folder, read one tensor at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / RECORD
        if not path.is_file():
            raise SpeechmergeError(f"{self.folder}: not a statistics folder (no {RECORD}); gather the statistics again")
        try:
            self.record = StatisticsRecord.model_validate_json(path.read_text())
        except ValueError:
            raise SpeechmergeError(
                f"{path}: unreadable statistics record; delete the folder and gather again"
            ) from None
        self._files: dict = {}

    def _tensor(self, file: str, key: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        if file not in self._files:
            try:
                self._files[file] = safe_open(str(self.folder / file), framework="pt")
            except (SafetensorError, OSError):
                raise SpeechmergeError(
                    f"{self.folder / file}: missing or damaged; delete the folder and gather again"
                ) from None
        return self._files[file].get_tensor(key)

    def check_model(self, content_hash: str, expert: str) -> None:
        """Refuse statistics gathered on another model than `expert` (whose weight-file hash is `content_hash`)."""
        if content_hash != self.record.model_hash:
            raise SpeechmergeError(
                f"{self.folder}: statistics of model {self.record.model_hash[:12]}, but expert {expert} is "
                f"{content_hash[:12]}; gather statistics for this expert (they are per model)"
            )

    def has_gram(self, weight: str) -> bool:
        return weight in self.record.grams

    def gram(self, weight: str) -> tuple[torch.Tensor, int]:
        """(Σ x xᵀ [in, in] float32, N rows) of the inputs of the linear layer whose weight is `weight`."""
        entry = self.record.grams.get(weight)
        if entry is None:
            raise SpeechmergeError(
                f"{self.folder}: no Gram matrix for {weight} (gathered for the {self.record.parts}'s linear layers); "
                "gather statistics with gram for this model"
            )
        return self._tensor(entry.file, entry.tensor), entry.rows

    def has_fisher(self, name: str) -> bool:
        return name in self.record.fishers

    def fisher(self, name: str) -> torch.Tensor:
        """The diagonal Fisher of parameter `name` (its shape, float32)."""
        if name not in self.record.fishers:
            raise SpeechmergeError(
                f"{self.folder}: no Fisher for {name} (gathered for the {self.record.parts}'s parameters); "
                "gather statistics with fisher for this model"
            )
        return self._tensor(FISHER_FILE, f"fisher/{name}")


def statistics_key(model_hash: str, data_hash: str, settings: StatisticsSettings, parts: str) -> str:
    """The cache key: SHA-256 of the format, hashes, settings and parts."""
    import hashlib

    identity = json.dumps(
        {"format": FORMAT, "model": model_hash, "data": data_hash, "settings": settings.model_dump(), "parts": parts},
        sort_keys=True,
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]
