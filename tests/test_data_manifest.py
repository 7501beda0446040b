"""Manifests: round trips (JSONL, CSV), every bad-data case with its line number, --skip-bad,
and the `speechmerge data check` command."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile
from conftest import run_cli

from speechmerge.data.manifest import FIELDS, read_manifest, scan_manifest, write_manifest
from speechmerge.errors import SpeechmergeError


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "clips").mkdir()
    soundfile.write(tmp_path / "clips" / "a.wav", tone(1.5), 16000)
    soundfile.write(tmp_path / "clips" / "b.flac", tone(2.0, 44100, 2), 44100)
    soundfile.write(tmp_path / "long.wav", tone(31.0, 8000), 8000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return tmp_path


def good_rows() -> list[dict]:
    return [
        {"id": "a", "audio": "clips/a.wav", "text": "hola", "language": "es", "split": "train", "speaker": "s1"},
        {
            "id": "a-t",
            "audio": "clips/a.wav",
            "text": "hola",
            "translation": "hello",
            "language": "es",
            "task": "translate",
            "domain": "chat",
        },
        {"id": "b", "audio": "clips/b.flac", "text": "bonjour", "language": "fr"},
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_reads_resolves_paths_and_measures_durations(folder):
    utterances = read_manifest(write_jsonl(folder / "m.jsonl", good_rows()))
    assert [u.id for u in utterances] == ["a", "a-t", "b"]
    assert utterances[0].audio == (folder / "clips" / "a.wav").resolve()
    assert utterances[0].duration == pytest.approx(1.5)
    assert utterances[2].duration == pytest.approx(2.0)
    assert utterances[0].task == "transcribe" and utterances[1].task == "translate"
    assert utterances[0].reference == "hola" and utterances[1].reference == "hello"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip(folder, suffix):
    original = read_manifest(write_jsonl(folder / "m.jsonl", good_rows()))
    copy = folder / "sub" / f"copy{suffix}"
    write_manifest(copy, original)
    again = read_manifest(copy)
    assert again == original
    if suffix == ".csv":
        assert copy.read_text(encoding="utf-8").splitlines()[0] == ",".join(FIELDS)


def test_paths_are_relative_inside_the_manifest_folder_and_absolute_outside(folder):
    original = read_manifest(write_jsonl(folder / "m.jsonl", good_rows()))
    write_manifest(folder / "here.jsonl", original)
    write_manifest(folder / "elsewhere" / "there.jsonl", original)
    write_manifest(folder / "elsewhere" / "rel.jsonl", original, relative_audio=True)
    assert json.loads((folder / "here.jsonl").read_text().splitlines()[0])["audio"] == "clips/a.wav"
    assert json.loads((folder / "elsewhere" / "there.jsonl").read_text().splitlines()[0])["audio"] == str(
        (folder / "clips" / "a.wav").resolve()
    )
    assert json.loads((folder / "elsewhere" / "rel.jsonl").read_text().splitlines()[0])["audio"] == "../clips/a.wav"
    assert read_manifest(folder / "elsewhere" / "rel.jsonl") == original


def test_csv_with_extra_columns_and_empty_optional_cells(folder):
    path = folder / "m.csv"
    path.write_text(
        "id,audio,text,language,task,translation,notes\nx,clips/a.wav,ciao,it,,,whatever\n", encoding="utf-8"
    )
    (utterance,) = read_manifest(path)
    assert utterance.task == "transcribe" and utterance.translation is None and utterance.language == "it"


BAD_CASES = {
    "missing audio file": ({"audio": "clips/none.wav"}, "not found"),
    "unreadable audio": ({"audio": "broken.wav"}, "unreadable"),
    "empty text": ({"text": "   "}, "empty text"),
    "clip over 30 s": ({"audio": "long.wav"}, "longer than Whisper's 30 s"),
    "unknown language": ({"language": "xx"}, "unknown language code 'xx'"),
    "translate without translation": ({"task": "translate"}, "needs a non-empty 'translation'"),
    "unknown task": ({"task": "summarise"}, "unknown task"),
    "missing id": ({"id": ""}, "missing 'id'"),
    "duplicate id": ({"id": "a"}, "duplicate id 'a' (first on line 1)"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_each_bad_line_is_reported_with_its_line_number(folder, case):
    change, message = BAD_CASES[case]
    rows = good_rows()
    rows.insert(2, {**{"id": "new", "audio": "clips/a.wav", "text": "hola", "language": "es"}, **change})
    path = write_jsonl(folder / "m.jsonl", rows)
    with pytest.raises(SpeechmergeError) as raised:
        read_manifest(path)
    text = str(raised.value)
    assert text.startswith(f"{path}: line 3") and message in text and "--skip-bad" in text
    assert "\n" not in text


def test_malformed_json_and_non_object_lines(folder):
    path = folder / "m.jsonl"
    path.write_text(json.dumps(good_rows()[0]) + "\n{not json\n\n[1, 2]\n", encoding="utf-8")
    scan = scan_manifest(path)
    assert [(bad.line, bad.reasons[0].split(" (")[0]) for bad in scan.bad] == [
        (2, "not valid JSON"),
        (4, "expected a JSON object, found list"),
    ]
    assert len(scan.utterances) == 1


def test_skip_bad_keeps_the_good_lines_and_reports_each_skipped_one(folder, caplog):
    rows = good_rows() + [
        {"id": "c", "audio": "clips/none.wav", "text": "x", "language": "es"},
        {"id": "d", "audio": "clips/a.wav", "text": "", "language": "es"},
    ]
    path = write_jsonl(folder / "m.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="speechmerge.data"):
        utterances = read_manifest(path, skip_bad=True)
    assert [u.id for u in utterances] == ["a", "a-t", "b"]
    skipped = [record.getMessage() for record in caplog.records]
    assert len(skipped) == 2
    assert "skipped line 4 (id 'c')" in skipped[0] and "not found" in skipped[0]
    assert "skipped line 5 (id 'd')" in skipped[1] and "empty text" in skipped[1]


def test_a_manifest_with_nothing_usable_is_an_error_even_when_skipping(folder):
    path = write_jsonl(folder / "m.jsonl", [{"id": "c", "audio": "nope.wav", "text": "x", "language": "es"}])
    with pytest.raises(SpeechmergeError, match="no usable utterance"):
        read_manifest(path, skip_bad=True)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("absent.jsonl", None, "manifest not found"),
        ("m.txt", "whatever", "unknown manifest format"),
        ("m.csv", "a;b;c\n1;2;3\n", "CSV header must name the columns"),
    ],
)
def test_unusable_manifest_files(folder, name, content, message):
    path = folder / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(SpeechmergeError, match=message):
        read_manifest(path)


def test_a_failed_write_leaves_the_old_manifest_and_no_temporary_file(folder, monkeypatch):
    import speechmerge.data.manifest as manifest_module

    original = read_manifest(write_jsonl(folder / "m.jsonl", good_rows()))
    target = folder / "out.jsonl"
    target.write_text("previous content\n")
    calls = []

    class FailingJson:
        @staticmethod
        def dumps(record, **kwargs):
            calls.append(record)
            if len(calls) == 2:
                raise OSError("disk full")
            return json.dumps(record, **kwargs)

    monkeypatch.setattr(manifest_module, "json", FailingJson)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(target, original)
    assert len(calls) == 2  # the failure happened mid-file
    assert target.read_text() == "previous content\n"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".out")] == []


def test_data_check_lists_every_bad_line_and_exits_2(folder, capsys):
    rows = good_rows() + [
        {"id": "c", "audio": "clips/none.wav", "text": "x", "language": "es"},
        {"id": "a", "audio": "clips/a.wav", "text": "y", "language": "zz"},
    ]
    path = write_jsonl(folder / "m.jsonl", rows)
    code, out, err = run_cli(["data", "check", path], capsys)
    assert code == 2
    assert "line 4 (id 'c')" in out and "line 5 (id 'a')" in out and "unknown language code 'zz'" in out
    assert "3 usable utterances" in out
    assert "2 bad lines" in err
    code, out, err = run_cli(["data", "check", path, "--skip-bad"], capsys)
    assert code == 0 and "line 4" in out


def test_data_check_passes_a_clean_manifest(folder, capsys):
    code, out, _ = run_cli(["data", "check", write_jsonl(folder / "m.jsonl", good_rows())], capsys)
    assert code == 0 and "3 usable utterances" in out


def test_data_check_prints_a_long_path_on_one_line(folder, capsys):
    """A path longer than the terminal is printed whole, so that it can be copied or grepped."""
    deep = folder / ("a-folder-name-that-is-long-" * 4) / ("and-another-one-" * 4)
    deep.mkdir(parents=True)
    rows = [{**row, "audio": str(folder / row["audio"])} for row in good_rows()]
    path = write_jsonl(deep / "m.jsonl", rows)
    assert len(str(path)) > 120
    code, out, _ = run_cli(["data", "check", path], capsys)
    assert code == 0 and f"{path}: 3 usable utterances" in out
