"""How to evaluate: decoding choices (which change predictions) and scoring choices (which do not)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Each backend's weight type when none is chosen.
DEFAULT_WEIGHTS = {"transformers": "float32", "torch": "float32", "ctranslate2": "int8"}
# Fastest decoder batch measured on the 2-core CPU (docs/performance.md, "Decoding backends"; for
# the torch and ctranslate2 paths batch 32 was not reliably faster: "Frozen-encoder models ...").
DEFAULT_BATCH_SIZE = 8
# Encoder positions per second of audio (Whisper: 1500 for 30 s) and the margin kept after the
# audio with `encoder_window="audio"`.
ENCODER_POSITIONS_PER_SECOND = 50
AUDIO_WINDOW_MARGIN_SECONDS = 1.0


class DecodeOptions(BaseModel):
    """Decoding choices. Those in `prediction_key` change what is decoded and key the cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["transformers", "torch", "ctranslate2"] = Field(
        "transformers",
        description="transformers (reference), torch (greedy from cached encoder outputs, same text) or ctranslate2",
    )
    beam_size: int = Field(1, ge=1, le=16, description="1 = greedy search")
    language: Literal["manifest", "detect"] = Field(
        "manifest", description="decode in the manifest's language, or in the language Whisper detects"
    )
    language_id: bool = Field(
        False, description="also detect each clip's language and report LID accuracy (one more decoder pass per clip)"
    )
    quantization: Optional[Literal["int8", "float32", "int8_float32", "int16"]] = Field(
        None, description="weight type: torch float32 (default) or int8; ctranslate2 int8 (default), float32, ..."
    )
    max_new_tokens: Optional[int] = Field(
        None, ge=4, description="token budget per clip (default: half the decoder's context, as openai-whisper)"
    )
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=256, description="clips decoded together")
    encoder_cache: bool = Field(
        True,
        description="reuse the float32 encoder outputs across models sharing an encoder "
        "(off: ctranslate2 runs its own encoder in its weight type)",
    )
    threads: Optional[int] = Field(None, ge=1, description="CPU threads (default: torch's default)")
    encoder_window: Literal["full", "audio"] = Field(
        "full",
        description="cross-attend to all 30 s of encoder positions, or only to those holding audio plus a margin",
    )

    cross_attention: Literal["keys", "encoder"] = Field(
        "keys",
        description="torch backend: form the cross-attention keys and values once per clip (the reference's "
        "arithmetic, same text), or attend over the encoder output without them (faster, equal to rounding)",
    )

    @field_validator("beam_size")
    @classmethod
    def _greedy_backend(cls, value: int, info: ValidationInfo) -> int:
        if value != 1 and info.data.get("backend") == "torch":
            raise ValueError(
                "the torch backend decodes greedily (beam size 1); beam search is the transformers backend's"
            )
        return value

    @field_validator("quantization")
    @classmethod
    def _backend_weights(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        allowed = {"transformers": ("float32",), "torch": ("float32", "int8")}.get(info.data.get("backend"))
        if value is not None and allowed is not None and value not in allowed:
            raise ValueError(f"the {info.data['backend']} backend takes {' or '.join(allowed)}")
        return value

    @field_validator("encoder_window")
    @classmethod
    def _window_backend(cls, value: str, info: ValidationInfo) -> str:
        if value != "full" and info.data.get("backend") == "ctranslate2":
            raise ValueError("the audio window needs the transformers or torch backend (ctranslate2 keeps 30 s)")
        return value

    @field_validator("cross_attention")
    @classmethod
    def _cross_attention_backend(cls, value: str, info: ValidationInfo) -> str:
        if value != "keys" and info.data.get("backend") != "torch":
            raise ValueError("attending over the encoder output (cross_attention: encoder) is the torch backend's")
        return value

    @property
    def weights(self) -> str:
        """The weight type decoding uses (`quantization`, else the backend's default)."""
        return self.quantization or DEFAULT_WEIGHTS[self.backend]

    @property
    def detects_language(self) -> bool:
        return self.language == "detect" or self.language_id

    def prediction_key(self) -> str:
        """SHA-256 of the choices that change predictions (not batch size, threads, caching or
        whether languages are identified: an entry with a detected language serves both). The
        encoder cache changes predictions only for ctranslate2 (float32 torch encoder outputs, or
        CTranslate2's own encoder)."""
        fields = {
            "backend": self.backend,
            "beam_size": self.beam_size,
            "language": self.language,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.backend != "transformers":
            fields["quantization"] = self.weights
        if self.encoder_window != "full":
            fields["encoder_window"] = self.encoder_window
        if self.cross_attention != "keys":
            fields["cross_attention"] = self.cross_attention
        if self.backend == "ctranslate2" and self.encoder_cache:  # its own encoder otherwise
            fields["encoder"] = "torch float32"
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def describe(self) -> str:
        """A short label, e.g. `transformers greedy` or `ctranslate2 int8 beam 5`."""
        search = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
        backend = self.backend if self.backend == "transformers" else f"{self.backend} {self.weights}"
        language = ", detected language" if self.language == "detect" else ""
        window = ", audio window" if self.encoder_window == "audio" else ""
        cross = ", attending over the encoder output" if self.cross_attention == "encoder" else ""
        return f"{backend} {search}{language}{window}{cross}"


class EvalOptions(BaseModel):
    """Decoding plus scoring choices for `evaluate`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decode: DecodeOptions = DecodeOptions()
    cer: bool = Field(False, description="also report CER for languages written with spaces")
    prediction_cache: bool = Field(True, description="reuse cached predictions of the same model, clip and decoding")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="level of every score's bootstrap interval")
