"""RegMean and Fisher merging end to end: `speechmerge merge` with experts that name their data.

The expected tensors are computed here from each expert's statistics (gathered by
speechmerge.datastats, whose Gram matrices and Fishers are checked against a direct computation in
test_datastats.py) with the closed forms of the papers written out in this file:
RegMean Wᵀ = (Σ_t G̃_t)⁻¹ Σ_t G̃_t W_tᵀ (Jin et al. 2023, eq. 3), Fisher θ = Σ λ_t F_t θ_t / Σ λ_t F_t
(Matena & Raffel 2022, eq. 2)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import run_cli
from eval_models import write_clips, write_tiny_whisper
from safetensors.torch import load_file

from speechmerge.data.manifest import read_manifest
from speechmerge.datastats import StatisticsSettings, expert_statistics

LINEAR = "model.decoder.layers.0.fc1.weight"
BIAS = "model.decoder.layers.0.fc1.bias"
ENCODER = "model.encoder.layers.0.fc1.weight"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_aware")
    base = write_tiny_whisper(root / "base", seed=0)
    experts = [
        write_tiny_whisper(root / f"expert{i}", seed=10 + i, encoder_from=base, decoder_noise=0.05) for i in range(2)
    ]
    manifests = [write_clips(root / f"clips{i}", 3, seed=i) for i in range(2)]
    return root, base, experts, manifests


def _recipe(root, base, experts, manifests, method, params, data=True):
    recipe = {
        "base": str(base),
        "experts": [
            {"path": str(e), **({"data": [str(m)]} if data or i == 0 else {})}
            for i, (e, m) in enumerate(zip(experts, manifests))
        ],
        "method": method,
        "params": params,
    }
    path = root / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _merged(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _weights(directory):
    return _merged(directory)


def _statistics(family, kinds):
    _, base, experts, manifests = family
    settings = StatisticsSettings(statistics=kinds)
    return [expert_statistics(e, read_manifest(m), settings, base=base) for e, m in zip(experts, manifests)]


def test_regmean_merges_each_linear_weight_by_the_least_squares_solution(family, capsys):
    root, base, experts, manifests = family
    out = root / "regmean-out"
    code, _, err = run_cli(
        ["merge", _recipe(root, base, experts, manifests, "regmean", {"alpha": 0.5}), "-o", out], capsys
    )
    assert code == 0, err
    merged, inputs = _merged(out), [_weights(e) for e in experts]
    grams = []
    for stats in _statistics(family, ("gram",)):
        total, rows = stats.gram(LINEAR)
        g = total.double() / rows
        grams.append(0.5 * g + 0.5 * torch.diag(torch.diagonal(g)))  # G̃ = α G + (1 − α) diag G
    right = sum(g @ w[LINEAR].double().T for g, w in zip(grams, inputs))
    expected = torch.linalg.solve(sum(grams), right).T
    torch.testing.assert_close(merged[LINEAR].double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(merged[BIAS], (inputs[0][BIAS] + inputs[1][BIAS]) / 2)  # no Gram: the average
    torch.testing.assert_close(merged[ENCODER], _weights(base)[ENCODER], rtol=0, atol=0)  # frozen encoder: the base's
    record = (out / "speechmerge_merge.json").read_text()
    assert "data_statistics" in record


def test_fisher_merging_weights_every_entry_by_the_experts_fishers(family, capsys):
    root, base, experts, manifests = family
    out = root / "fisher-out"
    code, _, err = run_cli(["merge", _recipe(root, base, experts, manifests, "fisher", {}), "-o", out], capsys)
    assert code == 0, err
    merged, inputs = _merged(out), [_weights(e) for e in experts]
    fishers = [s.fisher(LINEAR).double().clamp_min(1e-10) for s in _statistics(family, ("fisher",))]
    expected = sum(f * w[LINEAR].double() for f, w in zip(fishers, inputs)) / sum(fishers)
    torch.testing.assert_close(merged[LINEAR].double(), expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(merged[LINEAR], (inputs[0][LINEAR] + inputs[1][LINEAR]) / 2)  # not a plain average


def test_a_data_aware_method_without_data_for_an_expert_is_refused_before_any_work(family, capsys):
    root, base, experts, manifests = family
    recipe = _recipe(root, base, experts, manifests, "regmean", {}, data=False)
    out = root / "refused"
    code, _, err = run_cli(["merge", recipe, "-o", out], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {recipe}: experts[1] (expert1)"), lines[0]
    assert "data:" in lines[0]
    assert not out.exists()


def test_a_singular_system_without_ridge_is_one_line_naming_the_tensor(family, capsys):
    """Statistics of one utterance of a few frames: Σ G has rank below the layer's width."""
    root, base, experts, manifests = family
    one = manifests[0].parent / "one.jsonl"
    one.write_text(manifests[0].read_text().splitlines()[0] + "\n")
    recipe = {
        "base": str(base),
        "experts": [{"path": str(e), "data": [str(one)]} for e in experts],
        "method": "regmean",
        "params": {"alpha": 1.0},
    }
    path = root / "singular.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = root / "singular-out"
    code, _, err = run_cli(["merge", path, "-o", out], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "singular" in lines[0] and "ridge" in lines[0] and "model.decoder." in lines[0], lines[0]
    assert not out.exists()


def test_a_study_grid_holds_the_data_aware_methods_with_all_methods_or_by_name():
    from speechmerge.study.recipe import method_grid, parse_study

    base = {"name": "s", "base": "builtin:whisper-base", "corpus": {"builtin": "multilingual", "size": "demo"}}
    grid = method_grid(parse_study({**base, "all_methods": True}, "s.yaml"))
    assert {"regmean", "fisher", "ties"} <= set(grid)
    left = method_grid(parse_study({**base, "all_methods": True, "leave_out": ["regmean", "fisher"]}, "s.yaml"))
    assert "regmean" not in left and "fisher" not in left and "ties" in left
    named = method_grid(parse_study({**base, "methods": {"regmean": {"alpha": [0.1, 1.0]}}}, "s.yaml"))
    assert [p["alpha"] for p in named["regmean"]] == [0.1, 1.0]


@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_an_in_memory_merge_equals_the_disk_merge(family, method, tmp_path):
    from speechmerge.merging.api import merge
    from speechmerge.merging.memory import MemoryMerger
    from speechmerge.recipe import load_recipe

    root, base, experts, manifests = family
    recipe = load_recipe(_recipe(root, base, experts, manifests, method, {}))
    merger = MemoryMerger(recipe, include=r"model\.decoder\..*")
    in_memory = merger.merge(recipe)
    out, _ = merge(merger.disk_recipe(recipe), tmp_path / "out", show_progress=False)
    on_disk = _merged(out)
    assert LINEAR in in_memory
    for name, tensor in in_memory.items():
        assert torch.equal(tensor.float(), on_disk[name].float()), name
