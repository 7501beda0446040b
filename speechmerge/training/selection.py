"""Which utterances a run trains and validates on: manifests filtered by language, task and domain.

A source is a manifest file (JSONL or CSV), a built corpus (a folder with `corpus.json`,
whose manifests are picked by their labels without reading the others), or a folder of
manifests. Utterances with `split: train` (or no split) train; `split: validation` validates;
any other split (test, ...) is never touched. When the selection has no validation
utterance, a seeded `validation_fraction` of the training utterances is held out instead.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from speechmerge.data.manifest import TASKS, Utterance, read_manifest, whisper_languages
from speechmerge.errors import SpeechmergeError

MANIFEST_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv")
TRAIN_SPLITS = ("train", None)
VALIDATION_SPLIT = "validation"


class DataSelection(BaseModel):
    """Sources and filters; an empty filter keeps every value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: tuple[Path, ...]
    languages: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()

    def describe(self) -> str:
        filters = [
            f"{name}={','.join(values)}"
            for name, values in (("language", self.languages), ("task", self.tasks), ("domain", self.domains))
            if values
        ]
        return f"{', '.join(map(str, self.sources))} ({'; '.join(filters) or 'no filter'})"

    def keeps(self, language: str, task: str, domain: Optional[str]) -> bool:
        return (
            (not self.languages or language in self.languages)
            and (not self.tasks or task in self.tasks)
            and (not self.domains or domain in self.domains)
        )


@dataclass(frozen=True)
class TrainingData:
    """The utterances of a run, and how its validation set was made."""

    train: list[Utterance]
    validation: list[Utterance]
    validation_source: str  # "split" or "held out of train"

    def summary(self) -> dict:
        """Counts per language, task and domain: what the training record keeps."""

        def counts(utterances):
            return {
                "utterances": len(utterances),
                "seconds": round(sum(u.duration or 0.0 for u in utterances), 1),
                "by_language_task_domain": dict(
                    sorted(Counter(f"{u.language}/{u.task}/{u.domain}" for u in utterances).items())
                ),
            }

        return {
            "train": counts(self.train),
            "validation": counts(self.validation),
            "validation_source": self.validation_source,
        }


def check_filters(selection: DataSelection) -> None:
    """Refuse filter values that can never match: unknown language codes or tasks."""
    known = whisper_languages()
    unknown = [code for code in selection.languages if code not in known]
    if unknown:
        raise SpeechmergeError(
            f"--language {','.join(unknown)}: not a Whisper language code; use codes such as es, de, pt"
        )
    bad_tasks = [task for task in selection.tasks if task not in TASKS]
    if bad_tasks:
        raise SpeechmergeError(f"--task {','.join(bad_tasks)}: unknown task; choose {' or '.join(TASKS)}")
    if not selection.sources:
        raise SpeechmergeError("no data given; pass --data with a manifest, a folder of manifests or a built corpus")


def selected_utterances(selection: DataSelection) -> list[Utterance]:
    """Every train and validation utterance of the sources that the filters keep, in source order."""
    check_filters(selection)
    found = []
    for source in selection.sources:
        for manifest in _manifests(Path(source), selection):
            found += [
                u
                for u in read_manifest(manifest)
                if u.split in (*TRAIN_SPLITS, VALIDATION_SPLIT) and selection.keeps(u.language, u.task, u.domain)
            ]
    return found


def training_data(selection: DataSelection, validation_fraction: float, seed: int) -> TrainingData:
    """Split the selection into train and validation; a clear error when nothing is left to train on."""
    utterances = selected_utterances(selection)
    train = [u for u in utterances if u.split in TRAIN_SPLITS]
    validation = [u for u in utterances if u.split == VALIDATION_SPLIT]
    if not train:
        raise SpeechmergeError(
            f"{selection.describe()}: no training utterance matches ({_inventory(selection)}); "
            "check --language/--task/--domain against the data"
        )
    if validation:
        return TrainingData(train, validation, "split")
    if len(train) < 2:
        raise SpeechmergeError(
            f"{selection.describe()}: one training utterance and no validation split; give at least two utterances or a validation split"
        )
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(validation_fraction * len(train)))])
    return TrainingData(
        [u for i, u in enumerate(train) if i not in held],
        [u for i, u in enumerate(train) if i in held],
        "held out of train",
    )


def _manifests(source: Path, selection: DataSelection) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise SpeechmergeError(
            f"{source}: no such manifest or folder; give a manifest (.jsonl/.csv), a folder of them or a built corpus"
        )
    if (source / "corpus.json").is_file():
        from speechmerge.data.corpus import open_corpus

        corpus = open_corpus(source)
        return [
            corpus.path(info)
            for info in corpus.index.manifests
            if info.split in ("train", VALIDATION_SPLIT) and selection.keeps(info.language, info.task, info.domain)
        ]
    found = sorted(path for path in source.iterdir() if path.suffix in MANIFEST_SUFFIXES)
    if not found:
        raise SpeechmergeError(f"{source}: no manifest in this folder (looked for {', '.join(MANIFEST_SUFFIXES)})")
    return found


def _inventory(selection: DataSelection) -> str:
    """What the sources do have, to put beside an empty selection."""
    everything = selected_utterances(DataSelection(sources=selection.sources))
    if not everything:
        return "the sources hold no train or validation utterance"
    labels = {
        "languages": sorted({u.language for u in everything}),
        "tasks": sorted({u.task for u in everything}),
        "domains": sorted({str(u.domain) for u in everything}),
    }
    return "they have " + "; ".join(f"{name} {', '.join(values)}" for name, values in labels.items())
