"""The built-in corpus's sentences: data files `text/<set>/<language>.tsv` (`id<TAB>sentence`).

Sets are parallel: the same id is the same meaning in every language, and `text/<set>/en.tsv`
holds the English, which is the translation reference of every other language. Splits are made
by sentence id, so a sentence that is in a test split in one language is in no training split
in any language. The split of a set is fixed (independent of the build seed): its ids are
shuffled by a generator seeded with the set's name, the first sixth is `test`, the next sixth
`validation`, the rest `train`. Sets written as evaluation-only (a different style, an unseen
domain) are all `test`; a set that re-words another set's sentences (Brazilian Portuguese of
`general`) takes that set's splits.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from speechmerge.errors import SpeechmergeError

TEXT_DIR = Path(__file__).parent / "text"


@dataclass(frozen=True)
class Sentence:
    """One sentence of a set in one language, with its English translation."""

    id: str
    text: str
    translation: str


def read_tsv(path: Path) -> dict[str, str]:
    """`id -> sentence` from a two-column TSV file, in file order."""
    rows: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1].strip():
            raise SpeechmergeError(f"{path}: line {number}: expected 'id<TAB>sentence'; fix the data file")
        if parts[0] in rows:
            raise SpeechmergeError(f"{path}: line {number}: duplicate id {parts[0]!r}; fix the data file")
        rows[parts[0]] = parts[1].strip()
    return rows


@cache
def sentences(set_name: str, language: str) -> tuple[Sentence, ...]:
    """The sentences of a set in a language (`pt-br` for Brazilian Portuguese), each with its English."""
    path = TEXT_DIR / set_name / f"{language}.tsv"
    if not path.is_file():
        have = ", ".join(available_languages(set_name)) or "none"
        raise SpeechmergeError(
            f"{path}: no {language!r} text for sentence set {set_name!r} (have: {have}); choose another language"
        )
    english = read_tsv(TEXT_DIR / set_name / "en.tsv")
    rows = read_tsv(path)
    missing = [key for key in rows if key not in english]
    if missing:
        raise SpeechmergeError(f"{path}: ids {missing[:3]} have no English in {set_name}/en.tsv; add their translation")
    return tuple(Sentence(key, text, english[key]) for key, text in rows.items())


def available_languages(set_name: str) -> list[str]:
    """The languages a set is written in."""
    return sorted(path.stem for path in (TEXT_DIR / set_name).glob("*.tsv"))


@cache
def shuffled_ids(set_name: str) -> tuple[str, ...]:
    """The set's English ids permuted by a generator seeded with the set name (never the build seed)."""
    ids = sorted(read_tsv(TEXT_DIR / set_name / "en.tsv"))
    order = np.random.default_rng(zlib.crc32(set_name.encode())).permutation(len(ids))
    return tuple(ids[index] for index in order)


@cache
def split_of(set_name: str) -> dict[str, str]:
    """`id -> split` for a set whose sentences serve training: 1/6 test, 1/6 validation, the rest train."""
    ids = shuffled_ids(set_name)
    held = round(len(ids) / 6)
    return {
        key: "test" if rank < held else "validation" if rank < 2 * held else "train" for rank, key in enumerate(ids)
    }


def ordered_split(set_name: str, split: str) -> list[str]:
    """The ids of one split of a set in the fixed shuffled order, so that prefixes are nested subsets."""
    assignment = split_of(set_name)
    return [key for key in shuffled_ids(set_name) if assignment[key] == split]
