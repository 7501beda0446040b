"""Hugging Face speech datasets in, speechmerge manifests out.

Two layouts are read:

- a dataset saved with `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`datasets.load_from_disk`);
  its audio column is read undecoded (`datasets.Audio(decode=False)`: the file's bytes or path),
- an *audiofolder*: audio files with a `metadata.csv` or `metadata.jsonl` whose `file_name`
  column names each file (relative to the metadata file), at the top or in one sub-folder per
  split. The metadata is read with `datasets` (`Dataset.from_csv` / `Dataset.from_json`);
  the `audiofolder` builder itself is not used because in `datasets` 5 it needs torchcodec to
  re-encode every file.

A column mapping names the dataset's columns for our fields (`{"text": "sentence"}`); fields
the dataset lacks can be fixed for every row (`language="es"`, `task`). Every clip is written as
a 16 kHz mono WAV file next to one manifest per split, and the result is checked like any
manifest (bad rows raise, or are skipped and reported with `skip_bad`). The output folder
appears only when complete.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from speechmerge.data.audio import UnreadableAudio, resample, write_wav
from speechmerge.data.manifest import FIELDS, Utterance, scan_manifest, write_manifest
from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_directory, refuse_existing

log = logging.getLogger("speechmerge.data")

MAPPABLE = tuple(field for field in FIELDS if field not in ("duration",))
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def parse_columns(pairs: list[str]) -> dict[str, str]:
    """`["text=sentence", "language=locale"]` -> `{"text": "sentence", "language": "locale"}`."""
    mapping = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise SpeechmergeError(f"--column {pair!r}: expected FIELD=COLUMN, e.g. text=sentence")
        if field.strip() not in MAPPABLE:
            raise SpeechmergeError(
                f"--column {pair!r}: unknown field {field.strip()!r}; fields are {', '.join(MAPPABLE)}"
            )
        mapping[field.strip()] = column.strip()
    return mapping


def open_dataset_splits(source: Path) -> dict[str, tuple[datasets.Dataset, Path]]:  # noqa: F821
    """`split -> (dataset, folder its relative audio paths start from)` for a saved dataset or an audiofolder."""
    source = Path(source)
    if not source.is_dir():
        raise SpeechmergeError(f"{source}: not a folder; give a dataset saved with save_to_disk or an audiofolder")
    if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
        return _saved_splits(source)
    metadata = sorted(path for name in METADATA_FILES for path in source.glob(f"**/{name}"))
    if metadata:
        return _audiofolder_splits(source, metadata)
    raise SpeechmergeError(
        f"{source}: neither a saved dataset (no dataset_dict.json or state.json) nor an audiofolder (no metadata.csv or metadata.jsonl); see docs/data.md"
    )


def _saved_splits(source: Path) -> dict:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(source))
    except Exception as error:  # datasets raises FileNotFoundError, ValueError, pyarrow errors
        raise SpeechmergeError(
            f"{source}: cannot load the saved dataset ({error}); re-save it with save_to_disk"
        ) from error
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return {
        split: (dataset, source / split if (source / split).is_dir() else source) for split, dataset in parts.items()
    }


def _audiofolder_splits(source: Path, metadata: list[Path]) -> dict:
    import datasets

    splits = {}
    with _datasets_progress_bars_off(), tempfile.TemporaryDirectory(prefix="speechmerge-metadata-") as scratch:
        for path in metadata:
            split = "train" if path.parent == source else path.parent.relative_to(source).parts[0]
            if split in splits:
                raise SpeechmergeError(
                    f"{path}: a second metadata file for split {split!r}; keep one metadata.csv or metadata.jsonl per split"
                )
            reader = datasets.Dataset.from_csv if path.suffix == ".csv" else datasets.Dataset.from_json
            try:
                splits[split] = (reader(str(path), cache_dir=scratch, keep_in_memory=True), path.parent)
            except Exception as error:  # datasets wraps parser errors in its own types
                raise SpeechmergeError(
                    f"{path}: cannot read the metadata ({error}); it needs a header with file_name and one row per file"
                ) from error
    return splits


@contextmanager
def _datasets_progress_bars_off():
    """datasets' bars off for a block (one per small metadata file is noise), as they were after it."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def import_dataset(
    source: Path,
    output: Path,
    columns: Optional[dict[str, str]] = None,
    language: Optional[str] = None,
    task: Optional[str] = None,
    skip_bad: bool = False,
    force: bool = False,
) -> dict[str, Path]:
    """Convert a Hugging Face dataset into `output/<split>.jsonl` + `output/audio/<split>/*.wav`.

    `columns` maps our fields to the dataset's columns (defaults: a column of the field's own
    name; `audio`, else `file_name`, for the audio). Returns `split -> manifest path`."""
    output = Path(output)
    refuse_existing(output, force)
    splits = open_dataset_splits(source)
    fixed = {"language": language, "task": task}
    written = {}
    with atomic_directory(output, force=True) as tmp:
        for split, (dataset, folder) in splits.items():
            mapping = _resolve_columns(source, split, dataset.column_names, columns or {}, fixed)
            manifest = tmp / f"{split}.jsonl"
            kept = _convert_split(source, dataset, folder, split, mapping, fixed, tmp, manifest, skip_bad)
            if not kept:
                raise SpeechmergeError(
                    f"{source}: split {split!r}: no usable row; check the column mapping (--column) and --language"
                )
            written[split] = output / manifest.name
    return written


def _resolve_columns(
    source: Path, split: str, available: list[str], columns: dict[str, str], fixed: dict
) -> dict[str, str]:
    """Our field -> the dataset's column, checked against the columns the split has."""
    mapping = {field: field for field in MAPPABLE if field in available}
    if "audio" not in available and "file_name" in available:
        mapping["audio"] = "file_name"
    mapping.update(columns)
    missing = [column for column in columns.values() if column not in available]
    if missing:
        raise SpeechmergeError(
            f"{source}: split {split!r} has no column {missing[0]!r} (columns: {', '.join(available)}); fix --column"
        )
    for field in ("audio", "text", "language"):
        if field not in mapping and not (field in fixed and fixed[field]):
            hint = " or pass --language" if field == "language" else ""
            raise SpeechmergeError(
                f"{source}: split {split!r} has no {field!r} column (columns: {', '.join(available)}); map one with --column {field}=COLUMN{hint}"
            )
    return mapping


def _convert_split(
    source: Path,
    dataset,
    folder: Path,
    split: str,
    mapping: dict,
    fixed: dict,
    output: Path,
    manifest: Path,
    skip_bad: bool,
) -> list[Utterance]:
    """Write each row's audio as a 16 kHz WAV and the split's manifest; check it like any manifest.

    A bad row (unreadable audio, or any manifest check) raises naming the dataset, split and row,
    or with `skip_bad` is reported and left out."""
    import datasets

    audio_column = mapping["audio"]
    if isinstance(dataset.features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    rows, utterances, bad = [], [], []
    for index, row in enumerate(dataset):
        values = {field: row.get(column) for field, column in mapping.items()}
        values.update({field: value for field, value in fixed.items() if value})
        clip_id = _safe_id(values.get("id") or f"{split}-{index:06d}")
        wav = output / "audio" / split / f"{index:06d}.wav"  # row numbers: ids may repeat (a bad row)
        try:
            write_wav(wav, _row_audio(values["audio"], folder))
        except UnreadableAudio as error:
            bad.append((index, f"id {clip_id!r}: unreadable audio ({error.reason})"))
            continue
        rows.append(index)
        utterances.append(_unchecked_utterance(values, clip_id, wav, split))
    write_manifest(manifest, utterances)
    scan = scan_manifest(manifest)
    bad += [(rows[line.line - 1], f"id {line.id!r}: {'; '.join(line.reasons)}") for line in scan.bad]
    if bad and not skip_bad:
        index, reason = min(bad)
        more = f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise SpeechmergeError(
            f"{source}: split {split!r}: row {index}: {reason}{more}; fix the data or skip bad rows (--skip-bad)"
        )
    for index, reason in sorted(bad):
        log.warning("%s: split %r: skipped row %d: %s", source, split, index, reason)
    if scan.bad:
        write_manifest(manifest, scan.utterances)
    return scan.utterances


def _unchecked_utterance(values: dict, clip_id: str, wav: Path, split: str) -> Utterance:
    """The row as an utterance, not yet validated (the manifest check that follows validates it)."""
    return Utterance.model_construct(
        id=clip_id,
        audio=wav.resolve(),
        text=_text(values.get("text")),
        translation=_text(values.get("translation")) or None,
        language=_text(values.get("language")),
        task=_text(values.get("task")) or "transcribe",
        domain=_text(values.get("domain")) or None,
        split=_text(values.get("split")) or split,
        speaker=_text(values.get("speaker")) or None,
        duration=None,
    )


def _row_audio(value, folder: Path) -> np.ndarray:
    """16 kHz mono samples of an audio cell: undecoded `{bytes, path}`, a path, or `{array, sampling_rate}`."""
    import soundfile

    if isinstance(value, dict) and value.get("array") is not None:
        samples = np.asarray(value["array"], dtype=np.float32)
        return resample(samples.mean(axis=-1) if samples.ndim > 1 else samples, int(value["sampling_rate"]))
    if isinstance(value, dict) and value.get("bytes"):
        source, label = io.BytesIO(value["bytes"]), value.get("path") or "embedded audio"
    else:
        path = value.get("path") if isinstance(value, dict) else value
        if not path:
            raise UnreadableAudio(Path("?"), "no audio in this row")
        source = label = Path(path) if Path(path).is_absolute() else folder / path
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except Exception as error:
        raise UnreadableAudio(Path(str(label)), str(error)) from error
    return resample(samples.mean(axis=1), rate)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _safe_id(value) -> str:
    """An id usable as a file name: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return re.sub(r"[^\w.\-]", "_", str(value)).strip("._") or "clip"
