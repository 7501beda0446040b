"""AdaMerging on tiny Whisper models: entropy goes down, the references are never read, and the
learned coefficients are a recipe that reproduces the merged decoder."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state
from eval_models import write_clips, write_tiny_whisper

from speechmerge.data.manifest import read_manifest
from speechmerge.merging.api import merge
from speechmerge.recipe import parse_recipe
from speechmerge.search.adamerging import AdaMerging, layer_group


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("ada")
    base = write_tiny_whisper(root / "base", seed=0)
    experts = [write_tiny_whisper(root / f"e{i}", seed=i + 1, encoder_from=base, decoder_noise=0.05) for i in range(2)]
    clips = read_manifest(write_clips(root / "clips", 4, seed=3))
    recipe = parse_recipe(
        {"base": str(base), "experts": [str(e) for e in experts], "method": "task_arithmetic", "device": "cpu"},
        where="ada.yaml",
    )
    return recipe, base, clips


@pytest.mark.parametrize("variant", ["first", "greedy"])
def test_entropy_goes_down_and_no_reference_is_read(setting, variant):
    recipe, base, clips = setting
    runs = []
    for utterances in (clips, [u.model_copy(update={"text": "garbage ¿?", "translation": "xx"}) for u in clips]):
        ada = AdaMerging(recipe, base, utterances, variant=variant, lr=0.05, batch_size=4, refresh=2)
        before = ada.mean_entropy()
        result = ada.fit(steps=6)
        runs.append((before, ada.mean_entropy(), result.coefficients))
    (before, after, learned), (_, _, learned_garbage) = runs
    assert after < before
    assert learned == learned_garbage
    assert all(value != pytest.approx(0.3) for weights in learned.values() for value in weights)


def test_learned_coefficients_are_a_recipe_that_reproduces_the_decoder(setting, tmp_path):
    recipe, base, clips = setting
    ada = AdaMerging(recipe, base, clips, lr=0.05, batch_size=4)
    ada.fit(steps=2)
    expected = {k: v.detach() for k, v in ada.merged().items()}
    out, _ = merge(ada.as_recipe().updated(output=str(tmp_path / "m")), show_progress=False)
    merged = load_state(out)
    assert {layer_group(n) for n in expected} == set(ada.groups)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-6)
    base_state = load_state(base)
    assert all(torch.equal(merged[n], base_state[n]) for n in merged if n.startswith("model.encoder."))
