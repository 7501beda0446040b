"""Files and directories that appear only when complete: write a temporary sibling, then rename.

A rename within one directory is atomic on POSIX file systems, so a reader (another process,
a resumed run) sees either the old content or the new one, never half of it. Temporary names
are `.<name>.tmp-<pid>-<random>` beside the target: unique per writer, so parallel processes
and threads never share one, and hidden from directory listings.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from speechmerge.errors import SpeechmergeError


def refuse_existing(target: Path, force: bool) -> None:
    """An existing output is never replaced without --force (checked before any work)."""
    if Path(target).exists() and not force:
        raise SpeechmergeError(f"{target}: already exists; choose another output or pass --force to replace it")


def _sibling(target: Path) -> Path:
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `target` for the block to write; when the block
    succeeds it replaces `target`. On any failure it is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_file_atomically(target: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `target` in one atomic step: the cache entries' writer."""
    with atomic_file(target) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_directory(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; when the block succeeds it becomes `target`,
    replacing an existing one only with `force` (refused before the block runs otherwise). On
    any failure it is removed and `target` is left as it was."""
    target = Path(target)
    refuse_existing(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = _sibling(target)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
