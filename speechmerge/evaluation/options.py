"""How to evaluate: decoding choices (which change predictions) and scoring choices (which do not)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

BACKENDS = ("transformers", "ctranslate2")
# Fastest decoder batch measured on the 2-core CPU (docs/performance.md, "Decoding backends").
DEFAULT_BATCH_SIZE = 8


class DecodeOptions(BaseModel):
    """Decoding choices. Those in `prediction_key` change what is decoded and key the cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["transformers", "ctranslate2"] = Field(
        "transformers", description="transformers (reference) or ctranslate2"
    )
    beam_size: int = Field(1, ge=1, le=16, description="1 = greedy search")
    language: Literal["manifest", "detect"] = Field(
        "manifest", description="decode in the manifest's language, or in the language Whisper detects"
    )
    language_id: bool = Field(
        False, description="also detect each clip's language and report LID accuracy (one more decoder pass per clip)"
    )
    quantization: Literal["int8", "float32", "int8_float32", "int16"] = Field(
        "int8", description="ctranslate2 weight type"
    )
    max_new_tokens: Optional[int] = Field(
        None, ge=4, description="token budget per clip (default: half the decoder's context, as openai-whisper)"
    )
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=256, description="clips decoded together")
    encoder_cache: bool = Field(
        True, description="reuse encoder outputs across models sharing an encoder (transformers)"
    )
    threads: Optional[int] = Field(None, ge=1, description="CPU threads (default: torch's default)")

    @property
    def detects_language(self) -> bool:
        return self.language == "detect" or self.language_id

    def prediction_key(self) -> str:
        """SHA-256 of the choices that change predictions (not batch size, threads, caching or
        whether languages are identified: an entry with a detected language serves both)."""
        fields = {
            "backend": self.backend,
            "beam_size": self.beam_size,
            "language": self.language,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.backend == "ctranslate2":
            fields["quantization"] = self.quantization
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def describe(self) -> str:
        """A short label, e.g. `transformers greedy` or `ctranslate2 int8 beam 5`."""
        search = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
        backend = self.backend if self.backend == "transformers" else f"ctranslate2 {self.quantization}"
        language = ", detected language" if self.language == "detect" else ""
        return f"{backend} {search}{language}"


class EvalOptions(BaseModel):
    """Decoding plus scoring choices for `evaluate`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decode: DecodeOptions = DecodeOptions()
    cer: bool = Field(False, description="also report CER for languages written with spaces")
    prediction_cache: bool = Field(True, description="reuse cached predictions of the same model, clip and decoding")
