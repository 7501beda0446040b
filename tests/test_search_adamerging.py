"""AdaMerging on tiny Whisper models: entropy goes down without any reference being read, TIES
pruning follows the paper, and the learned coefficients are a recipe that reproduces the decoder."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state
from eval_models import write_clips, write_tiny_whisper

from speechmerge.data.manifest import read_manifest
from speechmerge.merging.api import merge
from speechmerge.recipe import parse_recipe
from speechmerge.search.adamerging import AdaMerging, layer_group, ties_pruned


class Unlabelled:
    """A clip whose reference texts cannot be read: reading one fails the test."""

    def __init__(self, utterance):
        self.id, self.audio, self.language, self.task = (
            utterance.id,
            utterance.audio,
            utterance.language,
            utterance.task,
        )
        self.domain = utterance.domain

    @property
    def text(self):
        raise AssertionError("AdaMerging read a reference text")

    @property
    def translation(self):
        raise AssertionError("AdaMerging read a reference translation")


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
    return recipe, base, [Unlabelled(u) for u in clips]


@pytest.mark.parametrize(
    "variant, vectors", [("first", "task_arithmetic"), ("greedy", "task_arithmetic"), ("first", "ties")]
)
def test_entropy_goes_down_without_reading_a_reference(setting, variant, vectors):
    recipe, base, clips = setting
    ada = AdaMerging(recipe, base, clips, variant=variant, vectors=vectors, lr=0.05, batch_size=4, refresh=2)
    before = ada.mean_entropy()
    result = ada.fit(steps=6)
    assert ada.mean_entropy() < before
    assert len(result.entropies) == 6
    assert all(value != pytest.approx(0.3) for weights in result.coefficients.values() for value in weights)


def test_ties_pruning_keeps_the_top_entries_that_agree_with_the_elected_sign():
    tasks = torch.tensor([[0.9, -0.1, 0.5, -0.7, 0.2], [-0.3, 0.8, 0.4, -0.05, -0.6]])
    # density 0.4 keeps the 2 largest |x| per row: row 0 {0.9, -0.7}, row 1 {0.8, -0.6};
    # elected sign of the kept sum (0.9, 0.8, 0, -0.7, -0.6): +, +, + (zero), -, -.
    expected = torch.tensor([[0.9, 0.0, 0.0, -0.7, 0.0], [0.0, 0.8, 0.0, 0.0, -0.6]])
    assert torch.equal(ties_pruned(tasks, 0.4), expected)
    conflict = torch.tensor([[1.0, 0.5], [-0.4, 0.3]])  # entry 0: sum 0.6 > 0, the negative one is dropped
    assert torch.equal(ties_pruned(conflict, 1.0), torch.tensor([[1.0, 0.5], [0.0, 0.3]]))


@pytest.mark.parametrize("vectors, granularity", [("task_arithmetic", "block"), ("ties", "tensor")])
def test_learned_coefficients_are_a_recipe_that_reproduces_the_decoder(setting, tmp_path, vectors, granularity):
    recipe, base, clips = setting
    ada = AdaMerging(recipe, base, clips, vectors=vectors, granularity=granularity, lr=0.05, batch_size=4)
    ada.fit(steps=2)
    expected = {k: v.detach() for k, v in ada.merged().items()}
    experts = ada.write_pruned_experts(tmp_path / "pruned") if vectors == "ties" else None
    out, _ = merge(ada.as_recipe(experts).updated(output=str(tmp_path / "m")), show_progress=False)
    merged = load_state(out)
    assert {layer_group(n, granularity) for n in expected} == set(ada.groups)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-6)
    base_state = load_state(base)
    assert all(torch.equal(merged[n], base_state[n]) for n in merged if n.startswith("model.encoder."))
