"""Manifests: one utterance per line, JSONL (or CSV with the same columns).

Fields: `id` (unique), `audio` (path relative to the manifest's folder, or absolute), `text`,
`translation` (English; needed for `task: translate`), `language` (a Whisper language code),
`task` (`transcribe` | `translate`, default `transcribe`), `domain`, `split`, `speaker`,
`duration` (seconds; always measured from the audio header on load). Other columns are ignored.

A line is bad when its audio is missing or unreadable, its text is empty, its clip is longer than
Whisper's 30 s window, its language is not one Whisper knows, it asks for `translate` without a
translation, or its id repeats an earlier line's. `read_manifest` raises one `SpeechmergeError`
naming the file and line of the first bad line, or with `skip_bad=True` skips bad lines and
reports each one (logger `speechmerge.data`, which prints to stderr by default).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

from speechmerge.data.audio import SAMPLE_RATE, UnreadableAudio, audio_duration, load_audio
from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_file

__all__ = [
    "FIELDS",
    "MAX_SECONDS",
    "SAMPLE_RATE",
    "TASKS",
    "BadLine",
    "ManifestScan",
    "Utterance",
    "load_audio",
    "read_manifest",
    "scan_manifest",
    "whisper_languages",
    "write_manifest",
]

log = logging.getLogger("speechmerge.data")

TASKS = ("transcribe", "translate")
MAX_SECONDS = 30.0
FIELDS = ("id", "audio", "text", "translation", "language", "task", "domain", "split", "speaker", "duration")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


class Utterance(BaseModel):
    """One clip and what is said in it; `audio` is an absolute path."""

    model_config = ConfigDict(frozen=True)

    id: str
    audio: Path
    text: str
    translation: Optional[str] = None
    language: str
    task: Literal["transcribe", "translate"] = "transcribe"
    domain: Optional[str] = None
    split: Optional[str] = None
    speaker: Optional[str] = None
    duration: Optional[float] = None

    @property
    def reference(self) -> str:
        """What a perfect model outputs: the transcript, or the English translation for `translate`."""
        return self.translation if self.task == "translate" else self.text


@dataclass(frozen=True)
class BadLine:
    """A manifest line that cannot be used, and why."""

    line: int
    id: Optional[str]
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        name = f" (id {self.id!r})" if self.id else ""
        return f"line {self.line}{name}: {'; '.join(self.reasons)}"


@dataclass
class ManifestScan:
    """Every usable utterance of a manifest and every bad line, in file order."""

    path: Path
    utterances: list[Utterance] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


@cache
def whisper_languages() -> dict[str, str]:
    """Whisper's language codes and names (`transformers`' list, e.g. 'es' -> 'spanish')."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return dict(LANGUAGES)


def read_manifest(path: Path, skip_bad: bool = False) -> list[Utterance]:
    """The manifest's utterances; bad lines raise, or with `skip_bad` are skipped and reported."""
    scan = scan_manifest(path)
    if scan.bad and not skip_bad:
        first = scan.bad[0]
        more = (
            f" ({len(scan.bad) - 1} more bad lines: `speechmerge data check {path}` lists them)"
            if len(scan.bad) > 1
            else ""
        )
        raise SpeechmergeError(f"{path}: {first}{more}; fix the line or skip bad lines (--skip-bad)")
    for bad in scan.bad:
        log.warning("%s: skipped %s", path, bad)
    if not scan.utterances:
        raise SpeechmergeError(f"{path}: no usable utterance in the manifest; add lines with audio, text and language")
    return scan.utterances


def scan_manifest(path: Path) -> ManifestScan:
    """Check every line of a manifest; collect usable utterances and bad lines (never raises for a bad line)."""
    path = Path(path)
    scan = ManifestScan(path=path)
    first_line_of: dict[str, int] = {}
    for line, row in _rows(path):
        utterance, reasons = _check_row(row, path.parent.resolve())
        row_id = _text(row.get("id")) if isinstance(row, dict) else None
        if row_id and row_id in first_line_of:
            reasons.append(f"duplicate id {row_id!r} (first on line {first_line_of[row_id]})")
        elif row_id:
            first_line_of[row_id] = line
        if reasons:
            scan.bad.append(BadLine(line, row_id, tuple(reasons)))
        else:
            scan.utterances.append(utterance)
    return scan


def write_manifest(path: Path, utterances: Iterable[Utterance], relative_audio: bool = False) -> None:
    """Write utterances as JSONL (or CSV for a `.csv` path), atomically.

    Audio paths are written relative to the manifest's folder when the audio lies inside it,
    absolute otherwise; `relative_audio=True` writes every path relative (with `..` where needed),
    for a tree of manifests and audio that moves as one."""
    path = Path(path)
    folder = path.parent.resolve()
    records = [_record(utterance, folder, relative_audio) for utterance in utterances]
    with atomic_file(path) as tmp:
        if _is_csv(path):
            with open(tmp, "w", newline="", encoding="utf-8") as out:
                writer = csv.DictWriter(out, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows({k: "" if v is None else v for k, v in record.items()} for record in records)
        else:
            with open(tmp, "w", encoding="utf-8") as out:
                for record in records:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _record(utterance: Utterance, folder: Path, relative_audio: bool) -> dict:
    record = utterance.model_dump(mode="json")
    audio = Path(utterance.audio)
    if relative_audio or audio.is_relative_to(folder):
        record["audio"] = os.path.relpath(audio, folder)
    else:
        record["audio"] = str(audio)
    if record["duration"] is not None:
        record["duration"] = round(record["duration"], 4)
    return record


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, parsed row) pairs; a row that does not parse is yielded as its error text."""
    if not path.is_file():
        raise SpeechmergeError(f"{path}: manifest not found; give the path of a .jsonl or .csv manifest")
    if not _is_csv(path) and path.suffix.lower() not in JSONL_SUFFIXES:
        raise SpeechmergeError(
            f"{path}: unknown manifest format {path.suffix!r}; name it .jsonl (one JSON object a line) or .csv"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise SpeechmergeError(f"{path}: cannot read the manifest ({error}); save it as UTF-8 text") from error
    if _is_csv(path):
        yield from _csv_rows(path, text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, f"not valid JSON ({error.msg} at column {error.colno})"
            continue
        yield number, row if isinstance(row, dict) else f"expected a JSON object, found {type(row).__name__}"


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames or not {"audio", "text"} <= set(reader.fieldnames):
        raise SpeechmergeError(
            f"{path}: line 1: CSV header must name the columns {', '.join(FIELDS)} (at least id, audio, text, language); add a header line"
        )
    for row in reader:
        if any(_text(value) for value in row.values()):
            yield reader.line_num, row


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _check_row(row: dict | str, folder: Path) -> tuple[Optional[Utterance], list[str]]:
    """The utterance of one row, or the reasons it is bad."""
    if isinstance(row, str):
        return None, [row]
    reasons: list[str] = []
    values = {name: _text(row.get(name)) or None for name in FIELDS}
    for name in ("id", "audio", "language"):
        if values[name] is None:
            reasons.append(f"missing {name!r}")
    if values["text"] is None:
        reasons.append("empty text")
    language = (values["language"] or "").lower()
    if values["language"] is not None and language not in whisper_languages():
        reasons.append(
            f"unknown language code {values['language']!r} (not in Whisper's list; use a code such as 'es', 'pt', 'en')"
        )
    task = (values["task"] or "transcribe").lower()
    if task not in TASKS:
        reasons.append(f"unknown task {values['task']!r} (expected transcribe or translate)")
    if task == "translate" and values["translation"] is None:
        reasons.append("task translate needs a non-empty 'translation'")
    duration = None
    if values["audio"] is not None:
        audio = (folder / values["audio"]).resolve()
        if not audio.is_file():
            reasons.append(f"audio file {str(audio)!r} not found")
        else:
            try:
                duration = audio_duration(audio)
            except UnreadableAudio as error:
                reasons.append(f"audio file {str(audio)!r} is unreadable ({error.reason})")
            else:
                if duration > MAX_SECONDS:
                    reasons.append(f"clip is {duration:.1f} s long, longer than Whisper's {MAX_SECONDS:.0f} s; cut it")
    if reasons:
        return None, reasons
    utterance = Utterance(
        id=values["id"],
        audio=audio,
        text=values["text"],
        translation=values["translation"],
        language=language,
        task=task,
        domain=values["domain"],
        split=values["split"],
        speaker=values["speaker"],
        duration=duration,
    )
    return utterance, reasons
