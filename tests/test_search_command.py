"""`speechmerge search` end to end on tiny Whisper models: the best recipe, model, history, plot and
the test comparison; validation overlapping test is refused."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import load_state, run_cli
from eval_models import write_clips, write_tiny_whisper

from speechmerge.data.manifest import read_manifest, write_manifest


@pytest.fixture(scope="module")
def tiny_experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-models")
    base = write_tiny_whisper(root / "base", seed=0)
    experts = [write_tiny_whisper(root / f"e{i}", seed=i + 1, encoder_from=base, decoder_noise=0.02) for i in range(2)]
    return base, experts


def _clips(folder, count, seed, prefix):
    manifest = write_clips(folder, count, seed=seed, name=f"{prefix}.jsonl")
    write_manifest(manifest, [u.model_copy(update={"id": f"{prefix}-{u.id}"}) for u in read_manifest(manifest)])
    return manifest


def _write(tmp_path, tiny_experts, validation, test, **changes):
    base, experts = tiny_experts
    data = {
        "merge": {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": "task_arithmetic",
            "device": "cpu",
        },
        "space": {"weights": {"low": 0.1, "high": 1.0}},
        "validation": [str(validation)],
        "test": [str(test)] if test else [],
        "trials": 2,
        "output": "out",
        **changes,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_search_end_to_end(tiny_experts, tmp_path, capsys):
    validation = _clips(tmp_path / "val", 3, seed=1, prefix="val")
    test = _clips(tmp_path / "test", 3, seed=2, prefix="test")
    path = _write(
        tmp_path, tiny_experts, validation, test, validation_utterances=2, test_utterances=2, encoder_window="audio"
    )
    code, out, err = run_cli(["search", path], capsys)
    assert code == 0, err
    folder = tmp_path / "out"
    trials = json.loads((folder / "trials.json").read_text())
    assert len(trials) == 2 and all(t["decoded_clips"] == 2 for t in trials)  # the first 2 validation clips
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert [e["weight"] for e in best["experts"]] == pytest.approx(
        [max(trials, key=lambda t: t["value"])["params"][f"weight.{n}"] for n in ("e0", "e1")]
    )
    merged, base = load_state(folder / "model"), load_state(tiny_experts[0])
    assert all((merged[n] == base[n]).all() for n in merged if n.startswith("model.encoder."))
    assert (folder / "history.png").stat().st_size > 0
    assert (
        "macro" in (folder / "test-comparison.md").read_text() or "wer" in (folder / "test-comparison.md").read_text()
    )


def test_validation_overlapping_test_is_refused(tiny_experts, tmp_path, capsys):
    clips = _clips(tmp_path / "val", 3, seed=1, prefix="val")
    path = _write(tmp_path, tiny_experts, clips, clips)
    code, out, err = run_cli(["search", path], capsys)
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert "also in the test data" in line and str(path) in line
    assert not (tmp_path / "out").exists()


def _write_ada(tmp_path, tiny_experts, data, validation, test, **changes):
    base, experts = tiny_experts
    spec = {
        "merge": {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": "task_arithmetic",
            "device": "cpu",
        },
        "data": [str(data)],
        "validation": [str(validation)],
        "test": [str(test)],
        "grid": {"scale": [0.3, 1.0]},
        "steps": 2,
        "output": "ada",
        **changes,
    }
    path = tmp_path / "ada.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_adamerge_end_to_end(tiny_experts, tmp_path, capsys):
    validation = _clips(tmp_path / "val", 3, seed=1, prefix="val")
    test = _clips(tmp_path / "test", 3, seed=2, prefix="test")
    path = _write_ada(tmp_path, tiny_experts, test, validation, test, vectors="ties")
    code, out, err = run_cli(["adamerge", path], capsys)
    assert code == 0, err
    folder = tmp_path / "ada"
    history = json.loads((folder / "history.json").read_text())
    assert history["steps"] == 2 and len(history["entropies"]) == 2
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert all(e["path"].startswith(str(folder / "pruned")) for e in recipe["experts"])  # TIES-pruned experts
    assert len(recipe["overrides"]) == 1 + len(history["coefficients"])  # keep: base, then one per group
    grid = json.loads((folder / "grid.json").read_text())
    assert [p["params"]["scale"] for p in grid["points"]] == [0.3, 1.0]
    assert (folder / "test-comparison.md").is_file() and (folder / "model").is_dir()
    assert "entropy" in out


def test_adamerge_without_a_base_is_one_line(tiny_experts, tmp_path, capsys):
    clips = _clips(tmp_path / "val", 2, seed=1, prefix="val")
    path = _write_ada(tmp_path, tiny_experts, clips, clips, clips)
    spec = yaml.safe_load(path.read_text())
    del spec["merge"]["base"]
    path.write_text(yaml.safe_dump(spec))
    code, out, err = run_cli(["adamerge", path], capsys)
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert "merge.base" in line and str(path) in line
