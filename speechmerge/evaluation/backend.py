"""What a decoding backend does, and what both backends share.

A backend turns a batch of clips into encoder outputs, detects each clip's language from
them when asked (Whisper's language-token argmax after `<|startoftranscript|>`, as
openai-whisper's `detect_language`: one more decoder pass, whose cross-attention over the
1500 encoder frames costs about as much as the first decoding step) and decodes text from the
prompt

    <|startoftranscript|> <|language|> <|task|> <|notimestamps|>

greedily (beam 1) or by beam search, with the model's suppressed tokens, at most
`max_new_tokens` tokens. `transformers` is the reference; `torch` decodes greedily with the
decoder written out step by step (`greedy.py`) from the same encoder outputs; `ctranslate2`
decodes the same model exported to CTranslate2, from the same encoder outputs too when the
encoder-output cache is on (otherwise with CTranslate2's own encoder). All read audio the same way (`features.log_mel.LogMel`: the
model's own `WhisperFeatureExtractor`) and turn tokens into text with the model's own
tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from speechmerge.evaluation.model import EvalModel

PROMPT_LENGTH = 4  # <|startoftranscript|> <|language|> <|task|> <|notimestamps|>


@dataclass(frozen=True)
class DecodeSettings:
    """The decoding choices a backend needs for one call."""

    beam_size: int
    max_new_tokens: int


class Backend(Protocol):
    """Batch decoding of clips by one model."""

    name: str
    encoder_calls: int  # batches the encoder actually ran on (cache hits excluded)

    def encode(self, audio: Sequence[Path]) -> Any: ...

    def detect_languages(self, encoded: Any) -> list[str]: ...

    def decode(self, encoded: Any, languages: Sequence[str], task: str, settings: DecodeSettings) -> list[str]: ...


def max_new_tokens(model: EvalModel, requested: Optional[int]) -> int:
    """Half the decoder's context by default (openai-whisper's `sample_len`, CTranslate2's rule);
    at most the context less the prompt."""
    limit = model.max_target_positions - PROMPT_LENGTH
    return min(model.max_target_positions // 2, limit) if requested is None else max(1, min(requested, limit))


def load_tokenizer(model: EvalModel):
    """The model's own Whisper tokenizer (fast)."""
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast.from_pretrained(model.directory)


def language_code(token: str) -> str:
    """`<|es|>` -> `es`."""
    return token.strip("<|>")


def prompt_ids(tokenizer, multilingual: bool, language: str, task: str) -> list[int]:
    """Whisper's prompt: `<|startoftranscript|> <|language|> <|task|> <|notimestamps|>`
    (English-only models: `<|startoftranscript|> <|notimestamps|>`)."""
    tokens = ["<|startoftranscript|>"]
    if multilingual:
        tokens += [f"<|{language}|>", f"<|{task}|>"]
    tokens.append("<|notimestamps|>")
    return tokenizer.convert_tokens_to_ids(tokens)


def make_backend(
    model: EvalModel, name: str, quantization: str, threads: int, encoder_cache: bool, cross_attention: str = "keys"
) -> Backend:
    """The backend called `name` for `model` (`quantization`: its weight type; `cross_attention`:
    the torch backend's, see DecodeOptions)."""
    if name == "transformers":
        from speechmerge.evaluation.hf_backend import TransformersBackend

        return TransformersBackend(model, threads=threads, encoder_cache=encoder_cache)
    if name == "torch":
        from speechmerge.evaluation.torch_backend import TorchBackend

        return TorchBackend(
            model, threads=threads, weights=quantization, encoder_cache=encoder_cache, cross_attention=cross_attention
        )
    from speechmerge.evaluation.ct2_backend import Ct2Backend

    return Ct2Backend(model, quantization=quantization, threads=threads, encoder_cache=encoder_cache)
