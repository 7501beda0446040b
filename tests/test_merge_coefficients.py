"""Per-layer expert weights: gradients over depth (closed form) and layer-group overrides."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state

from speechmerge.checkpoints.whisper import TensorRole
from speechmerge.errors import SpeechmergeError
from speechmerge.merging.api import merge
from speechmerge.merging.coefficients import depth_position, interpolate
from speechmerge.merging.plan import build_plan
from speechmerge.recipe import parse_recipe


def _closed_form(values, i, layers):
    """w at block i of L: linear between values placed at k/(n-1), the block at i/(L-1)."""
    x = i / (layers - 1)
    t = x * (len(values) - 1)
    k = min(int(t), len(values) - 2)
    return values[k] + (values[k + 1] - values[k]) * (t - k)


@pytest.mark.parametrize("values", [[0.0, 1.0], [1.0, 0.2, 0.6], [0.5, -0.5, 2.0, 0.0, 1.0]])
@pytest.mark.parametrize("layers", [2, 6, 32])
def test_gradient_matches_the_closed_form(values, layers):
    for i in range(layers):
        role = TensorRole(f"model.decoder.layers.{i}.fc1.weight", "mlp", "decoder", i)
        assert interpolate(values, depth_position(role, layers)) == pytest.approx(_closed_form(values, i, layers))


def test_outside_the_blocks_first_and_last_values():
    front = TensorRole("model.decoder.embed_tokens.weight", "embedding", "decoder", None)
    final = TensorRole("model.decoder.layer_norm.weight", "norm", "decoder", None)
    assert interpolate([0.1, 0.9], depth_position(front, 4)) == pytest.approx(0.1)
    assert interpolate([0.1, 0.9], depth_position(final, 4)) == pytest.approx(0.9)


def test_plan_weights_per_tensor_and_group_override(family):
    base, experts = family
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [{"path": str(experts[0]), "weight": [0.2, 0.8]}, {"path": str(experts[1]), "weight": 0.5}],
            "method": "task_arithmetic",
            "overrides": [{"match": r".*encoder_attn\..*", "weights": [1.5, 2.5]}],
        },
        where="r.yaml",
    )
    entries = {e.name: e.weights for e in build_plan(recipe).entries}
    assert entries["model.decoder.layers.0.fc1.weight"] == pytest.approx((0.2, 0.5))
    assert entries["model.decoder.layers.1.fc1.weight"] == pytest.approx((0.8, 0.5))
    assert entries["model.decoder.layers.1.encoder_attn.q_proj.weight"] == pytest.approx((1.5, 2.5))


def test_merged_tensor_uses_its_layer_weight(family, tmp_path):
    """Task arithmetic with λ = 1: θ = θ_0 + Σ_t w_t(layer) τ_t, tensor by tensor."""
    base, experts = family
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [{"path": str(e), "weight": [0.0, 1.0]} for e in experts[:2]],
            "method": "task_arithmetic",
            "params": {"scale": 1.0},
            "device": "cpu",
        },
        where="r.yaml",
    )
    out, _ = merge(recipe, tmp_path / "m", show_progress=False)
    merged, theta0 = load_state(out), load_state(base)
    thetas = [load_state(e) for e in experts[:2]]
    for layer, w in ((0, 0.0), (1, 1.0)):
        name = f"model.decoder.layers.{layer}.fc1.weight"
        expected = theta0[name] + sum(w * (t[name] - theta0[name]) for t in thetas)
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"experts": [{"path": "a", "weight": []}, "b"]}, "r.yaml: experts.0.weight"),
        ({"experts": [{"path": "a", "weight": [1.0, float("nan")]}, "b"]}, "finite"),
        ({"overrides": [{"match": ".*", "weights": [1.0]}]}, "one weight per expert"),
    ],
)
def test_bad_weights_are_one_line(changes, message):
    data = {"base": "x", "experts": ["a", "b"], "method": "task_arithmetic", **changes}
    with pytest.raises(SpeechmergeError, match=message) as caught:
        parse_recipe(data, where="r.yaml")
    assert "\n" not in str(caught.value) and "r.yaml" in str(caught.value)
