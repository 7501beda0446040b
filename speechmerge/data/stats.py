"""How far a corpus's evaluation text is from its training text: vocabulary overlap.

Words are lower-cased Unicode word tokens (letters and digits, with inner apostrophes or
hyphens kept: "l'any", "pré-aqueça"). For an evaluation manifest and a training vocabulary V:

- token coverage = (tokens of the evaluation text whose word is in V) / (its tokens),
- new words = (distinct words of the evaluation text not in V) / (its distinct words).

Each evaluation manifest (task `transcribe`, split other than `train`) is compared with the
training text of its own domain (where the domain is trained on) and with all training text of
its language (every domain); languages with no training split in the corpus get no row.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from speechmerge.data.corpus import Corpus
from speechmerge.data.manifest import read_manifest

WORD = re.compile(r"\w+(?:['’\-]\w+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of a sentence."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class Overlap:
    tokens: int
    token_coverage: float
    new_words: float


def overlap(vocabulary: set[str], texts: Iterable[str]) -> Overlap:
    """Token coverage and share of new words of `texts` against a vocabulary."""
    tokens = [word for text in texts for word in words(text)]
    distinct = set(tokens)
    covered = sum(1 for word in tokens if word in vocabulary)
    unseen = sum(1 for word in distinct if word not in vocabulary)
    return Overlap(len(tokens), covered / len(tokens) if tokens else 0.0, unseen / len(distinct) if distinct else 0.0)


@dataclass(frozen=True)
class OverlapRow:
    language: str
    domain: str
    split: str
    sentences: int
    own_domain: Optional[Overlap]
    all_training: Overlap


def corpus_overlaps(corpus: Corpus) -> list[OverlapRow]:
    """One row per evaluation manifest of a corpus whose language has training text."""
    texts: dict[tuple[str, str, str], list[str]] = {}
    for info in corpus.select(task="transcribe"):
        unique = dict.fromkeys(
            u.text for u in read_manifest(corpus.path(info))
        )  # one entry per sentence, not per voice
        texts[(info.language, info.domain, info.split)] = list(unique)
    train_by_domain: dict[tuple[str, str], set[str]] = {}
    train_by_language: dict[str, set[str]] = defaultdict(set)
    for (language, domain, split), sentences in texts.items():
        if split == "train":
            vocabulary = {word for text in sentences for word in words(text)}
            train_by_domain[(language, domain)] = vocabulary
            train_by_language[language] |= vocabulary
    rows = []
    for (language, domain, split), sentences in sorted(texts.items()):
        if split == "train" or language not in train_by_language:
            continue
        own = train_by_domain.get((language, domain))
        rows.append(
            OverlapRow(
                language,
                domain,
                split,
                len(sentences),
                overlap(own, sentences) if own is not None else None,
                overlap(train_by_language[language], sentences),
            )
        )
    return rows
