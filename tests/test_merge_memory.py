"""The in-memory merge equals `speechmerge merge` on disk, bit for bit, for every method."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state

from speechmerge.merging.api import merge
from speechmerge.merging.memory import MemoryMerger
from speechmerge.merging.registry import all_methods
from speechmerge.recipe import parse_recipe

DECODER = r"model\.decoder\..*"


def _recipe(family, method: str, **changes):
    base, experts = family
    data = {
        "base": str(base),
        "experts": [{"path": str(e), "weight": [0.3, 0.7 + 0.1 * i]} for i, e in enumerate(experts)],
        "method": method,
        "device": "cpu",
        **changes,
    }
    return parse_recipe(data, where="test.yaml")


def _assert_equal_to_disk(merger, recipe, tmp_path):
    in_memory = merger.merge(recipe)
    out, _ = merge(merger.disk_recipe(recipe), tmp_path / "out", show_progress=False)
    on_disk = load_state(out)
    assert in_memory, "nothing merged"
    for name, tensor in in_memory.items():
        assert torch.equal(tensor.float(), on_disk[name]), name
    return in_memory, on_disk


@pytest.mark.parametrize("method", [m.name for m in all_methods() if not m.needs])  # data-aware: test_merge_data_aware
def test_memory_merge_equals_disk_merge(family, tmp_path, method):
    recipe = _recipe(family, method)
    merger = MemoryMerger(recipe)
    _assert_equal_to_disk(merger, recipe, tmp_path)


def test_decoder_only_merge_leaves_the_encoder_as_the_base(family, tmp_path):
    recipe = _recipe(family, "ties", params={"density": 0.5})
    merger = MemoryMerger(recipe, include=DECODER)
    assert merger.names and all(n.startswith("model.decoder.") for n in merger.names)
    in_memory, on_disk = _assert_equal_to_disk(merger, recipe, tmp_path)
    base = load_state(family[0])
    encoder = [n for n in on_disk if n.startswith("model.encoder.")]
    assert encoder and all(torch.equal(on_disk[n], base[n]) for n in encoder)


def test_repeated_calls_with_other_parameters_reuse_the_task_vectors(family, tmp_path):
    recipe = _recipe(family, "task_arithmetic", params={"scale": 0.5})
    merger = MemoryMerger(recipe, include=DECODER)
    first = merger.merge(recipe)
    other = recipe.updated(params={"scale": 0.25})
    second = merger.merge(other)
    again = merger.merge(recipe)
    assert all(torch.equal(first[n], again[n]) for n in first)  # the cache was not modified in place
    assert any(not torch.equal(first[n], second[n]) for n in first)
    _assert_equal_to_disk(merger, other, tmp_path)


def test_another_expert_list_is_refused(family):
    recipe = _recipe(family, "task_arithmetic")
    merger = MemoryMerger(recipe)
    fewer = recipe.updated(experts=[e.model_dump() for e in recipe.experts[:2]])
    with pytest.raises(Exception, match="base and experts must be those"):
        merger.merge(fewer)


def _reweighted(recipe, weights):
    return recipe.updated(experts=[{**e.model_dump(), "weight": w} for e, w in zip(recipe.experts, weights)])


def _without_lapack(monkeypatch):
    """Every decomposition the subspace methods could call fails from here on."""

    def refuse(*args, **kwargs):
        raise AssertionError("a decomposition was recomputed")

    for solver in ("eigh", "svd", "svdvals"):
        monkeypatch.setattr(torch.linalg, solver, refuse)
    monkeypatch.setattr(torch, "svd_lowrank", refuse)


REMEMBERED = [  # (method, params, whether the decompositions outlive a change of weights)
    ("tsv_m", {}, True),
    ("tsv_m", {"orthogonaliser": "newton_schulz"}, True),
    ("boosted_tsv_m", {"spectrum": "full", "orthogonaliser": "svd"}, True),
    ("lors", {"rank_fraction": 0.25}, True),
    ("lors_svp", {"rank_fraction": 0.25}, True),
    ("iso_c", {}, False),
    ("iso_cts", {}, False),
]


@pytest.mark.parametrize(("method", "params", "across_weights"), REMEMBERED)
def test_remembered_decompositions_are_reused_and_change_nothing(family, tmp_path, method, params, across_weights):
    """A second call with another scale (and, where the decompositions are the task vectors' own,
    other weights, one of them negative) decomposes nothing and still equals the disk merge."""
    recipe = _recipe(family, method, params=params)
    merger = MemoryMerger(recipe, include=DECODER)
    merger.merge(recipe)
    other = recipe.updated(params={**params, "scale": 0.7})
    if across_weights:
        other = _reweighted(other, [0.8, -0.4, 1.5])
    with pytest.MonkeyPatch.context() as patch:
        _without_lapack(patch)
        in_memory = merger.merge(other)
    assert merger.memo
    out, _ = merge(merger.disk_recipe(other), tmp_path / "out", show_progress=False)
    on_disk = load_state(out)
    assert all(torch.equal(tensor.float(), on_disk[name]) for name, tensor in in_memory.items())


def test_forgetting_recomputes_and_a_changed_setting_is_not_served_from_memory(family, tmp_path):
    recipe = _recipe(family, "tsv_m")
    merger = MemoryMerger(recipe, include=DECODER)
    merger.merge(recipe)
    merger.forget()
    assert not merger.memo
    randomised = recipe.updated(params={"svd": "randomised"})
    _assert_equal_to_disk(merger, randomised, tmp_path / "randomised")
    _assert_equal_to_disk(merger, recipe, tmp_path / "exact")
    _assert_equal_to_disk(merger, _reweighted(recipe, [0.0, 1.0, 0.5]), tmp_path / "a weight of zero")
