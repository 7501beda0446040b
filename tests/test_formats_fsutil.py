"""Atomic writes: a target is either the old content or the new, and nothing temporary is left."""

from __future__ import annotations

import pytest

from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_directory, atomic_file, write_file_atomically


def test_a_directory_appears_whole_and_an_existing_one_needs_force(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(SpeechmergeError, match="out: already exists; .*--force"):
        with atomic_directory(target) as tmp:
            raise AssertionError("the block must not run")
    with atomic_directory(target, force=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_block_leaves_the_old_directory_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, force=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["kept.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_file_is_replaced_only_when_its_block_succeeds(tmp_path):
    target = tmp_path / "deep" / "entry.json"
    write_file_atomically(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    write_file_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["entry.json"]
