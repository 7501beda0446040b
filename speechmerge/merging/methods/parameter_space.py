"""Parameter-space methods on the geometry of whole weights: Model Stock, Karcher mean and
Multi-SLERP (soup is in averaging.py).

Each needs only inner products between the T expert tensors: their T × T Gram matrix is a
per-tensor statistics pass, after which the result is one weighted sum of the inputs — an
entry-wise merge the engine may stream in row blocks, with no temporary larger than the output.
"""

from __future__ import annotations

import math

import torch

from speechmerge.merging.context import TensorContext
from speechmerge.merging.masks import weighted_sum
from speechmerge.merging.registry import IdenticalExperts, Param, merge_method


class GramPass:
    """Per-tensor statistics pass: G_ij = ⟨x_i, x_j⟩ over the whole tensor, in float64 (T × T)."""

    rounds = 1

    def __init__(self, num_tasks: int, ctx: TensorContext, params: dict):
        self.gram = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)

    def observe(self, round_index: int, tasks: torch.Tensor, ctx: TensorContext, params: dict) -> None:
        flat = tasks.reshape(tasks.shape[0], -1)
        self.gram += (flat @ flat.mT).double().cpu()

    def end_round(self, round_index: int) -> None:
        pass

    def result(self) -> torch.Tensor:
        return self.gram


def cosines(g: torch.Tensor) -> torch.Tensor:
    """Cosine similarities from a Gram matrix (0 against a zero vector), clamped to [−1, 1]."""
    norms = g.diagonal().clamp(min=0).sqrt()
    product = torch.outer(norms, norms)
    return torch.where(product > 0, g / torch.where(product > 0, product, 1.0), 0.0).clamp(-1.0, 1.0)


def normalised(weights: torch.Tensor) -> torch.Tensor:
    w = weights.double()
    return w / w.sum()


def model_stock_ratio(cos: float, count: int) -> float:
    """Model Stock's interpolation ratio t = T cos θ / (1 + (T − 1) cos θ)."""
    return count * cos / (1 + (count - 1) * cos)


@merge_method(
    name="model_stock",
    title="Model Stock",
    family="parameter space",
    space="deltas",
    source="Jang, Yun, Han, Model Stock: All we need is just a few fine-tuned models, ECCV 2024, arXiv 2403.19522",
    variant=(
        "Per tensor (every tensor), as mergekit: cos θ is the mean pairwise cosine between the experts' offsets "
        "θ_t − θ_0 over the whole tensor (the paper assumes one angle; mergekit averages pairs); "
        "θ = t θ̄ + (1 − t) θ_0 with θ̄ the weighted mean of the experts. Guard: a negative mean cosine "
        "(diverging experts, where t would be negative or infinite) is clamped to 0, giving θ_0."
    ),
    min_experts=2,
    tensor_statistics=GramPass,
    blockwise=True,
    identical_experts=IdenticalExperts("expert"),
)
def model_stock(tasks, base, weights, ctx: TensorContext):
    """cos θ = mean_{i<j} cos(τ_i, τ_j) with τ_t = θ_t − θ_0; t = T cos θ / (1 + (T − 1) cos θ);
    θ = θ_0 + t Σ_t w_t τ_t / Σ_t w_t."""
    count = tasks.shape[0]
    cos = cosines(ctx.tensor_stats)
    pairs = torch.triu_indices(count, count, offset=1)
    mean_cos = max(0.0, float(cos[pairs[0], pairs[1]].mean()))
    ratio = model_stock_ratio(mean_cos, count)
    return weighted_sum(tasks, (normalised(weights) * ratio).float())


@merge_method(
    name="karcher",
    title="Karcher mean (Riemannian centre of mass on the sphere)",
    family="parameter space",
    space="weights",
    source="Karcher, Riemannian center of mass and mollifier smoothing, CPAM 1977; merging rule as mergekit's karcher",
    variant=(
        "Per tensor, as mergekit: each weight tensor normalised to unit Frobenius norm (tensors with norm ≤ tol are "
        "left out), the weighted Fréchet mean on the unit sphere found by Riemannian gradient steps "
        "m ← exp_m(Σ_t a_t log_m(u_t)) from the normalised weighted mean (at most max_iter steps, stopping when the "
        "step is below tol), then scaled by the weighted mean of the norms. Computed exactly in the span of the "
        "inputs from their Gram matrix."
    ),
    params=[
        Param("max_iter", int, 10, "largest number of Riemannian gradient steps (mergekit: 10)", ge=1, le=1000),
        Param("tol", float, 1e-5, "stop when the tangent step is shorter than this; also the negligible norm", gt=0),
    ],
    needs_base=False,
    tensor_statistics=GramPass,
    blockwise=True,
    identical_experts=IdenticalExperts("expert"),
)
def karcher(tasks, base, weights, ctx: TensorContext, *, max_iter, tol):
    """u_t = θ_t/‖θ_t‖; m = argmin_m Σ_t a_t d(m, u_t)², d the great-circle distance, a = w/Σw;
    θ = (Σ_t a_t ‖θ_t‖) m. Iteration: v = Σ_t a_t (φ_t / sin φ_t)(u_t − cos φ_t m), cos φ_t = ⟨m, u_t⟩;
    m ← cos‖v‖ m + sin‖v‖ v/‖v‖."""
    g = ctx.tensor_stats
    norms = g.diagonal().clamp(min=0).sqrt()
    valid = norms > tol
    a = normalised(weights)
    radius = float((a * norms).sum())
    if not valid.any():
        return torch.zeros_like(tasks[0])
    a_valid = torch.where(valid, a, 0.0)
    a_valid = a_valid / a_valid.sum()
    c = cosines(g)  # Gram matrix of the unit tensors u_t

    def length(coefficients: torch.Tensor) -> float:
        return math.sqrt(max(0.0, float(coefficients @ c @ coefficients)))

    m = a_valid.clone()  # m = Σ_t m_t u_t
    if length(m) < tol:
        m = torch.zeros_like(a).index_fill_(0, valid.nonzero()[0], 1.0)
    m = m / length(m)
    for _ in range(max_iter):
        dots = (c @ m).clamp(-1.0, 1.0)
        angles = torch.arccos(dots)
        factors = torch.where(angles < tol, 0.0, a_valid * angles / torch.sin(angles).clamp(min=1e-300))
        step = factors - (factors * dots).sum() * m  # v = Σ_t f_t u_t − (Σ_t f_t ⟨u_t, m⟩) m
        size = length(step)
        if size < tol:
            break
        m = math.cos(size) * m + (math.sin(size) / size) * step
        m = m / length(m)
    coefficients = torch.where(valid, radius * m / torch.where(valid, norms, 1.0), 0.0)
    return weighted_sum(tasks, coefficients.float())


@merge_method(
    name="multislerp",
    title="Multi-SLERP (barycentric spherical interpolation)",
    family="parameter space",
    space="weights",
    source="Goddard, Multi-SLERP (goddard.blog/posts/multislerp-wow-what-a-cool-idea); mergekit's multislerp",
    variant=(
        "Per tensor, as mergekit's multislerp without a base: the tensors are normalised to the unit sphere, "
        "projected onto the tangent plane at their normalised weighted mean, averaged there and mapped back with "
        "the exponential map, then scaled by the weighted mean norm. The weighted tangent projections sum to zero "
        "by construction, so the map back returns the normalised weighted mean of the unit tensors: "
        "θ = (Σ w_t ‖θ_t‖) · n(Σ w_t θ_t/‖θ_t‖). Guard: if the unit tensors cancel (antipodal inputs) the "
        "weighted Euclidean mean is returned (mergekit does that for two inputs and raises otherwise)."
    ),
    needs_base=False,
    tensor_statistics=GramPass,
    blockwise=True,
    identical_experts=IdenticalExperts("expert"),
)
def multislerp(tasks, base, weights, ctx: TensorContext):
    """u_t = θ_t/‖θ_t‖; m = Σ_t w_t u_t / ‖Σ_t w_t u_t‖ (w normalised); θ = (Σ_t w_t ‖θ_t‖) m."""
    g = ctx.tensor_stats
    norms = g.diagonal().clamp(min=0).sqrt()
    w = normalised(weights)
    units = torch.where(norms > 0, w / torch.where(norms > 0, norms, 1.0), 0.0)  # Σ w_t u_t = Σ units_t θ_t
    mean_length = math.sqrt(max(0.0, float(units @ g @ units)))
    if mean_length <= 1e-8 * float(w.abs().sum()):
        return weighted_sum(tasks, w.float())
    return weighted_sum(tasks, (units * float((w * norms).sum()) / mean_length).float())
