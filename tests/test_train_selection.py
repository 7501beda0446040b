"""Which utterances train and validate, expert groups, bad selections, and the seeded batch stream."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from speechmerge.data.audio import write_wav
from speechmerge.errors import SpeechmergeError
from speechmerge.training.baselines import expert_groups
from speechmerge.training.loop import micro_batch
from speechmerge.training.selection import DataSelection, training_data

ROWS = [
    # (id, language, task, domain, split)
    ("es-1", "es", "transcribe", "health", "train"),
    ("es-2", "es", "transcribe", "health", "train"),
    ("es-3", "es", "transcribe", "law", "train"),
    ("es-4", "es", "transcribe", "health", "validation"),
    ("es-5", "es", "transcribe", "health", "test"),
    ("es-1t", "es", "translate", "health", "train"),
    ("de-1", "de", "transcribe", "health", "train"),
    ("de-2", "de", "transcribe", "health", None),
    ("de-1t", "de", "translate", "law", "train"),
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("selection")
    write_wav(folder / "clip.wav", np.zeros(1600, dtype=np.float32))
    lines = []
    for uid, language, task, domain, split in ROWS:
        row = {
            "id": uid,
            "audio": "clip.wav",
            "text": f"texto {uid}",
            "translation": f"text {uid}",
            "language": language,
            "task": task,
            "domain": domain,
        }
        if split:
            row["split"] = split
        lines.append(json.dumps(row))
    path = folder / "all.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ids(utterances) -> list[str]:
    return [u.id for u in utterances]


def test_filters_and_splits(manifest):
    data = training_data(
        DataSelection(sources=(manifest,), languages=("es",), tasks=("transcribe",), domains=("health",)), 0.1, 0
    )
    assert _ids(data.train) == ["es-1", "es-2"]  # law, translate, test and German lines are left out
    assert _ids(data.validation) == ["es-4"] and data.validation_source == "split"
    everything = training_data(DataSelection(sources=(manifest,)), 0.1, 0)
    assert "es-5" not in _ids(everything.train + everything.validation)  # a test line never trains or validates
    assert "de-2" in _ids(everything.train)  # no split: training data


def test_without_a_validation_split_a_seeded_fraction_is_held_out(manifest):
    selection = DataSelection(sources=(manifest,), languages=("de",))
    first = training_data(selection, 0.5, seed=3)
    again = training_data(selection, 0.5, seed=3)
    assert first.validation_source == "held out of train"
    assert _ids(first.validation) == _ids(again.validation)
    assert len(first.validation) == 2 and len(first.train) == 1  # round(0.5 * 3) held out
    assert set(_ids(first.train)).isdisjoint(_ids(first.validation))
    assert sorted(_ids(first.train + first.validation)) == ["de-1", "de-1t", "de-2"]
    held = {tuple(_ids(training_data(selection, 0.5, seed).validation)) for seed in range(12)}
    assert len(held) > 1  # the seed chooses


def test_an_empty_selection_says_what_the_data_has(manifest):
    with pytest.raises(
        SpeechmergeError,
        match=r"no training utterance matches.*they have languages de, es; tasks transcribe, translate",
    ):
        training_data(DataSelection(sources=(manifest,), languages=("fr",)), 0.1, 0)


@pytest.mark.parametrize(
    "selection, message",
    [
        (dict(languages=("xx",)), r"--language xx: not a Whisper language code"),
        (dict(tasks=("summarise",)), r"--task summarise: unknown task"),
    ],
)
def test_impossible_filters_are_refused(manifest, selection, message):
    with pytest.raises(SpeechmergeError, match=message):
        training_data(DataSelection(sources=(manifest,), **selection), 0.1, 0)


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(SpeechmergeError, match=rf"{tmp_path / 'nope.jsonl'}: no such manifest or folder"):
        training_data(DataSelection(sources=(tmp_path / "nope.jsonl",)), 0.1, 0)
    with pytest.raises(SpeechmergeError, match="no manifest in this folder"):
        training_data(DataSelection(sources=(tmp_path,)), 0.1, 0)


def test_expert_groups_follow_the_order_of_the_filters(manifest):
    groups = expert_groups(
        DataSelection(sources=(manifest,), languages=("es", "de"), tasks=("translate", "transcribe"))
    )
    labels = [(g.languages, g.tasks, g.domains) for g in groups]
    assert labels == [
        (("es",), ("translate",), ("health",)),
        (("es",), ("transcribe",), ("health",)),
        (("es",), ("transcribe",), ("law",)),
        (("de",), ("translate",), ("law",)),
        (("de",), ("transcribe",), ("health",)),
    ]


def test_micro_batches_walk_seeded_epochs():
    count, size = 7, 3
    stream = [i for index in range(7) for i in micro_batch(index, count, size, seed=5)]  # 21 positions = 3 epochs
    for epoch in range(3):
        assert sorted(stream[epoch * count : (epoch + 1) * count]) == list(range(count))  # each epoch a permutation
    assert stream == [i for index in range(7) for i in micro_batch(index, count, size, seed=5)]
    assert stream != [i for index in range(7) for i in micro_batch(index, count, size, seed=6)]
    assert stream[:count] != stream[count : 2 * count]  # epochs are reshuffled
    assert Counter(len(micro_batch(i, count, size, 0)) for i in range(10)) == {size: 10}
