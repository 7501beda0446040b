"""Sized copies of a built corpus's manifests (speechmerge.data.subsets)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from speechmerge.data.corpus import build_corpus
from speechmerge.data.manifest import read_manifest
from speechmerge.data.subsets import kept_ids, subset_corpus
from speechmerge.errors import SpeechmergeError

if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus("multilingual", "tiny", root=tmp_path_factory.mktemp("corpora"), seed=0, languages=["es"])


def test_kept_ids_are_a_seeded_choice_of_distinct_ids():
    ids = [f"u{k}" for k in range(20)] * 2  # a clip listed twice (two tasks) counts once
    first = kept_ids(ids, 5, seed=0, labels=("es", "general", "test"))
    assert len(first) == 5 and first <= set(ids)
    assert kept_ids(ids, 5, seed=0, labels=("es", "general", "test")) == first
    assert kept_ids(ids, 5, seed=1, labels=("es", "general", "test")) != first
    assert kept_ids(ids, None, seed=0, labels=()) == set(ids) == kept_ids(ids, 99, seed=0, labels=())


def test_each_manifest_keeps_its_sized_share_and_both_tasks_the_same_clips(corpus, tmp_path):
    sizes = {"train": 2, "test/general": 1, "test/general/en": 2}
    written = subset_corpus(corpus.directory, tmp_path, sizes, seed=0)
    assert set(written) == {Path(info.path).stem for info in corpus.index.manifests}
    for info in corpus.index.manifests:
        full = read_manifest(corpus.path(info))
        kept = read_manifest(written[Path(info.path).stem])
        expected = {"train": 2, "test": 2 if info.language == "en" and info.domain == "general" else 1}
        if info.split == "test" and info.domain != "general":
            expected["test"] = len(full)  # no key for heldout: the default (None) keeps every clip
        assert len(kept) == min(expected.get(info.split, len(full)), len(full))
        assert {u.id for u in kept} <= {u.id for u in full}
        assert all(u.audio.is_file() for u in kept)
    for split in ("train", "test"):
        asr, st = (
            {u.id for u in read_manifest(written[f"es.general.{split}.{task}"])} for task in ("transcribe", "translate")
        )
        assert asr == st


def test_a_size_for_a_split_the_corpus_lacks_is_refused(corpus, tmp_path):
    with pytest.raises(SpeechmergeError, match="dev.*no manifest"):
        subset_corpus(corpus.directory, tmp_path, {"dev": 3})
    assert not any(tmp_path.iterdir())
