"""Model Stock, Karcher mean and Multi-SLERP against reference implementations written here
from their definitions (float64, on flattened vectors, no Gram-matrix shortcut), run through
the engine on a tiny Whisper family; identical experts must come back unchanged."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from conftest import load_state
from method_calls import call_method, tensor_context
from safetensors.torch import save_file
from test_merge_methods import TIED, run_merge

from speechmerge.errors import SpeechmergeError


def reference_model_stock(base: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    """Jang et al. Eq. (3): t = N cos θ / (1 + (N − 1) cos θ), θ_H = t θ̄ + (1 − t) θ_0, with cos θ
    the mean pairwise cosine of the offsets (mergekit's reading for N > 2)."""
    offsets = [(e - base).flatten() for e in experts]
    pairs = [(i, j) for i in range(len(offsets)) for j in range(i + 1, len(offsets))]
    cos = sum(float(torch.dot(offsets[i], offsets[j]) / (offsets[i].norm() * offsets[j].norm())) for i, j in pairs)
    cos /= len(pairs)
    n = len(experts)
    t = n * cos / (1 + (n - 1) * cos)
    return t * sum(experts) / n + (1 - t) * base


def log_map(m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The sphere's logarithm at m: the tangent vector of length d(m, u) pointing to u."""
    c = float(torch.dot(m, u).clamp(-1, 1))
    angle = math.acos(c)
    return torch.zeros_like(m) if angle < 1e-12 else (u - c * m) * (angle / math.sin(angle))


def exp_map(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    size = float(v.norm())
    return m if size == 0 else math.cos(size) * m + math.sin(size) * v / size


def reference_karcher(
    experts: list[torch.Tensor], weights: list[float], iterations: int = 10, tol: float = 1e-5
) -> torch.Tensor:
    """Weighted Fréchet mean on the unit sphere by Riemannian gradient descent (step 1), from the
    normalised Euclidean mean, then scaled by the weighted mean norm."""
    a = [w / sum(weights) for w in weights]
    flat = [e.flatten() for e in experts]
    units = [x / x.norm() for x in flat]
    m = sum(w * u for w, u in zip(a, units))
    m = m / m.norm()
    for _ in range(iterations):
        step = sum(w * log_map(m, u) for w, u in zip(a, units))
        if float(step.norm()) < tol:
            break
        m = exp_map(m, step)
        m = m / m.norm()
    radius = sum(w * float(x.norm()) for w, x in zip(a, flat))
    return (radius * m).reshape(experts[0].shape)


def reference_multislerp(experts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Goddard's Multi-SLERP as mergekit: project the unit tensors on the tangent plane at their
    normalised weighted mean, average there, map back, rescale by the weighted mean norm."""
    w = [x / sum(weights) for x in weights]
    flat = [e.flatten() for e in experts]
    units = [x / x.norm() for x in flat]
    mean = sum(wi * u for wi, u in zip(w, units))
    mean = mean / mean.norm()
    tangent = sum(wi * (u - torch.dot(u, mean) * mean) for wi, u in zip(w, units))
    point = exp_map(mean, tangent)
    return (sum(wi * float(x.norm()) for wi, x in zip(w, flat)) * point).reshape(experts[0].shape)


@pytest.fixture(scope="module")
def correlated_family(family, tmp_path_factory):
    """The tiny family with a shared component added to every expert, θ_t = θ_0 + τ_t + 2 τ_1, so that
    the experts' offsets have clearly positive cosines (independent random offsets are orthogonal)."""
    base_dir, expert_dirs = family
    base = load_state(base_dir)
    shared = {n: v - base[n] for n, v in load_state(expert_dirs[0]).items()}
    root = tmp_path_factory.mktemp("correlated")
    dirs = []
    for index, source in enumerate(expert_dirs):
        target = root / f"expert{index}"
        shutil.copytree(source, target)
        for file in target.glob("*.safetensors"):
            file.unlink()
        state = {n: (v + 2 * shared[n]).contiguous() for n, v in load_state(source).items() if n != TIED}
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
        dirs.append(target)
    return base_dir, dirs


def merged_against(tmp_path, family, method, reference, weights=None, **extra):
    base_dir, expert_dirs = family
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, method, weights=weights, **extra)
    base = load_state(base_dir)
    experts = [load_state(d) for d in expert_dirs]
    for name in merged:
        if name != TIED:
            expected = reference(base[name].double(), [e[name].double() for e in experts])
            torch.testing.assert_close(merged[name].double(), expected, atol=2e-6, rtol=1e-5, msg=name)


def test_model_stock_matches_the_paper(tmp_path, correlated_family):
    merged_against(tmp_path, correlated_family, "model_stock", reference_model_stock)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
def test_karcher_matches_riemannian_gradient_descent(tmp_path, family, weights):
    w = weights or [1.0, 1.0, 1.0]
    merged_against(tmp_path, family, "karcher", lambda base, experts: reference_karcher(experts, w), weights=weights)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
def test_multislerp_matches_mergekits_procedure(tmp_path, family, weights):
    w = weights or [1.0, 1.0, 1.0]
    merged_against(
        tmp_path, family, "multislerp", lambda base, experts: reference_multislerp(experts, w), weights=weights
    )


@pytest.mark.parametrize("method", ["model_stock", "karcher", "multislerp"])
def test_identical_experts_return_that_expert(tmp_path, family, method):
    base_dir, expert_dirs = family
    merged, _ = run_merge(tmp_path, base_dir, [expert_dirs[1]] * 3, method)
    expert = load_state(expert_dirs[1])
    for name in merged:
        torch.testing.assert_close(merged[name], expert[name], atol=1e-6, rtol=1e-5, msg=name)


def test_model_stock_needs_two_experts(tmp_path, family):
    base_dir, expert_dirs = family
    with pytest.raises(SpeechmergeError, match="at least 2 experts"):
        run_merge(tmp_path, base_dir, expert_dirs[:1], "model_stock")
    assert not (tmp_path / "out-model_stock").exists()


# --- degenerate inputs, directly on the method functions --------------------------------------


def call(method: str, tasks: torch.Tensor) -> torch.Tensor:
    return call_method(method, tasks, ctx=tensor_context("model.decoder.layers.0.fc1.bias", "bias", False))


def test_model_stock_of_diverging_experts_falls_back_to_the_base():
    direction = torch.randn(50, generator=torch.Generator().manual_seed(4))
    merged_delta = call("model_stock", torch.stack([direction, -direction]))  # task vectors τ_t = θ_t − θ_0
    assert torch.equal(merged_delta, torch.zeros(50))  # cos θ = −1 would make t = N cos θ/(1 + (N−1) cos θ) infinite


def test_spherical_means_of_antipodal_or_zero_tensors_stay_finite():
    x = torch.randn(40, generator=torch.Generator().manual_seed(5))
    for method in ["karcher", "multislerp"]:
        assert torch.isfinite(call(method, torch.stack([x, -x]))).all(), method
        assert torch.isfinite(call(method, torch.stack([x, torch.zeros_like(x), 2 * x]))).all(), method
        assert torch.equal(call(method, torch.zeros(3, 40)), torch.zeros(40)), method


def test_karcher_result_is_a_critical_point_of_the_sum_of_squared_distances():
    g = torch.Generator().manual_seed(6)
    experts = torch.randn(4, 30, generator=g) + 3.0  # clustered on one side of the sphere
    merged = call("karcher", experts)
    m = (merged / merged.norm()).double()
    gradient = sum(log_map(m, (e / e.norm()).double()) for e in experts)
    assert float(gradient.norm()) < 1e-4
