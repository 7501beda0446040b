"""Hugging Face datasets (save_to_disk and audiofolder) into manifests: column mapping,
resampling to 16 kHz mono, bad rows named by split and row, --skip-bad, refusals."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import soundfile
from conftest import run_cli

from speechmerge.data.hf_import import import_dataset, parse_columns
from speechmerge.data.manifest import load_audio, read_manifest
from speechmerge.errors import SpeechmergeError

datasets = pytest.importorskip("datasets")


def tone_bytes(frequency: float, seconds: float, rate: int, channels: int, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.4 * np.sin(2 * np.pi * frequency * t)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([mono] * channels, axis=1), rate, format=fmt)
    return buffer.getvalue()


def saved_dataset(folder, rows_by_split: dict[str, list[dict]]):
    """A DatasetDict with an `Audio` column holding encoded bytes, saved with save_to_disk."""
    features = datasets.Features(
        {
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "sentence": datasets.Value("string"),
            "locale": datasets.Value("string"),
        }
    )
    parts = {}
    for split, rows in rows_by_split.items():
        table = {key: [row[key] for row in rows] for key in ("audio", "sentence", "locale")}
        parts[split] = datasets.Dataset.from_dict(table, features=features).cast_column("audio", datasets.Audio())
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


def row(
    sentence: str,
    seconds: float = 1.0,
    rate: int = 44100,
    channels: int = 2,
    locale: str = "es",
    audio: bytes | None = None,
) -> dict:
    return {
        "audio": {
            "bytes": audio if audio is not None else tone_bytes(330.0, seconds, rate, channels),
            "path": "clip.wav",
        },
        "sentence": sentence,
        "locale": locale,
    }


def test_saved_dataset_with_column_mapping_becomes_16_khz_manifests(tmp_path):
    source = saved_dataset(
        tmp_path / "ds",
        {
            "train": [row("hola"), row("adiós", seconds=0.5, rate=22050, channels=1)],
            "test": [row("buenos días", rate=48000)],
        },
    )
    manifests = import_dataset(source, tmp_path / "out", parse_columns(["text=sentence", "language=locale"]))
    assert sorted(manifests) == ["test", "train"]
    train = read_manifest(manifests["train"])
    assert [(u.text, u.language, u.split, u.task) for u in train] == [
        ("hola", "es", "train", "transcribe"),
        ("adiós", "es", "train", "transcribe"),
    ]
    assert [round(u.duration, 3) for u in train] == [1.0, 0.5]
    info = soundfile.info(train[0].audio)
    assert (info.samplerate, info.channels) == (16000, 1)
    audio = load_audio(train[0].audio)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(len(audio), 1 / 16000)[np.argmax(spectrum)] == pytest.approx(330.0, abs=2.0)
    assert read_manifest(manifests["test"])[0].text == "buenos días"
    assert json.loads(manifests["train"].read_text().splitlines()[0])["audio"] == "audio/train/000000.wav"


def test_fixed_language_and_translate_task_with_a_translation_column(tmp_path):
    source = saved_dataset(tmp_path / "ds", {"train": [row("bonjour", locale="")]})
    with pytest.raises(SpeechmergeError, match="row 0: id 'train-000000': missing 'language'"):
        import_dataset(source, tmp_path / "out", {"text": "sentence", "language": "locale"})
    manifests = import_dataset(
        source, tmp_path / "out", {"text": "sentence", "translation": "sentence"}, language="fr", task="translate"
    )
    (utterance,) = read_manifest(manifests["train"])
    assert (utterance.language, utterance.task, utterance.reference) == ("fr", "translate", "bonjour")


def test_audiofolder_with_split_folders_and_metadata(tmp_path):
    for split, names in (("train", ["a", "b"]), ("test", ["c"])):
        folder = tmp_path / "af" / split
        folder.mkdir(parents=True)
        for name in names:
            (folder / f"{name}.flac").write_bytes(tone_bytes(440.0, 0.6, 8000, 1, fmt="FLAC"))
        with open(folder / "metadata.csv", "w", encoding="utf-8") as out:
            out.write("file_name,transcription\n" + "".join(f"{name}.flac,frase {name}\n" for name in names))
    manifests = import_dataset(tmp_path / "af", tmp_path / "out", {"text": "transcription"}, language="es")
    assert [u.text for u in read_manifest(manifests["train"])] == ["frase a", "frase b"]
    assert [round(u.duration, 2) for u in read_manifest(manifests["test"])] == [0.6]


def test_jsonl_audiofolder_at_the_top_is_the_train_split(tmp_path):
    folder = tmp_path / "af"
    folder.mkdir()
    (folder / "x.wav").write_bytes(tone_bytes(440.0, 0.4, 16000, 1))
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": "x.wav", "text": "hallo", "language": "de", "id": "clip one"}) + "\n"
    )
    manifests = import_dataset(folder, tmp_path / "out")
    (utterance,) = read_manifest(manifests["train"])
    assert (utterance.id, utterance.text, utterance.language) == ("clip_one", "hallo", "de")


def test_unreadable_metadata_is_named_and_leaves_progress_bars_as_they_were(tmp_path):
    folder = tmp_path / "af"
    folder.mkdir()
    (folder / "x.wav").write_bytes(tone_bytes(440.0, 0.4, 16000, 1))
    (folder / "metadata.jsonl").write_text("{not json\n")
    assert datasets.is_progress_bar_enabled()
    with pytest.raises(SpeechmergeError, match=r"metadata\.jsonl: cannot read the metadata"):
        import_dataset(folder, tmp_path / "out")
    assert datasets.is_progress_bar_enabled()  # switched off only while the metadata was read
    assert not (tmp_path / "out").exists()


def test_bad_rows_are_named_and_skip_bad_reports_them(tmp_path, caplog):
    rows = [
        row("uno"),
        row(""),
        row("tres", audio=b"not audio at all"),
        row("cuatro", seconds=31.0, rate=8000, channels=1),
    ]
    source = saved_dataset(tmp_path / "ds", {"train": rows})
    with pytest.raises(SpeechmergeError) as raised:
        import_dataset(source, tmp_path / "out", {"text": "sentence", "language": "locale"})
    message = str(raised.value)
    assert message.startswith(f"{source}: split 'train': row 1: id 'train-000001': empty text (2 more bad rows)")
    assert not (tmp_path / "out").exists()
    with caplog.at_level(logging.WARNING, logger="speechmerge.data"):
        manifests = import_dataset(source, tmp_path / "out", {"text": "sentence", "language": "locale"}, skip_bad=True)
    assert [u.text for u in read_manifest(manifests["train"])] == ["uno"]
    reports = [record.getMessage() for record in caplog.records]
    assert [report.split("skipped ")[1].split(":")[0] for report in reports] == ["row 1", "row 2", "row 3"]
    assert "unreadable audio" in reports[1] and "longer than Whisper's 30 s" in reports[2]


@pytest.mark.parametrize(
    "columns, message",
    [
        (["text=nope"], "split 'train' has no column 'nope' (columns: audio, sentence, locale)"),
        ([], "has no 'text' column (columns: audio, sentence, locale); map one with --column text=COLUMN"),
    ],
)
def test_column_errors(tmp_path, columns, message):
    source = saved_dataset(tmp_path / "ds", {"train": [row("hola")]})
    with pytest.raises(SpeechmergeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_dataset(source, tmp_path / "out", parse_columns(columns), language="es")


@pytest.mark.parametrize(
    "pair, message",
    [("text", "expected FIELD=COLUMN"), ("colour=red", "unknown field 'colour'"), ("text=", "expected FIELD=COLUMN")],
)
def test_column_mapping_syntax(pair, message):
    with pytest.raises(SpeechmergeError, match=message):
        parse_columns([pair])


def test_refusals_leave_existing_output_alone(tmp_path):
    source = saved_dataset(tmp_path / "ds", {"train": [row("hola")]})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SpeechmergeError, match="already exists; .* --force"):
        import_dataset(source, tmp_path / "out", {"text": "sentence", "language": "locale"})
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(SpeechmergeError, match="neither a saved dataset"):
        import_dataset(tmp_path / "out", tmp_path / "other")
    import_dataset(source, tmp_path / "out", {"text": "sentence", "language": "locale"}, force=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "train.jsonl").is_file()


def test_cli_import(tmp_path, capsys):
    source = saved_dataset(tmp_path / "ds", {"validation": [row("hola")]})
    code, out, _ = run_cli(
        ["data", "import", source, tmp_path / "out", "--column", "text=sentence", "-c", "language=locale"], capsys
    )
    assert code == 0 and f"validation: {tmp_path / 'out' / 'validation.jsonl'}" in out
    code, _, err = run_cli(["data", "import", source, tmp_path / "out", "--column", "text=sentence"], capsys)
    assert code == 2 and "already exists" in err
