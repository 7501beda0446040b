"""LoRS-Merging and its two ablations: low-rank (SVP) and sparse (MP) pruning of task vectors.

Zhao, Sun, Zhang, "LoRS-Merging: Low-Rank and Sparse Model Merging for Cross-Lingual Speech
Recognition and Translation", arXiv 2502.17380; code qmgzhao/LoRS-Merging.
Per 2-D block linear weight of each task vector τ (attention, cross-attention, MLP):

    L = U[:, :r] diag(σ_1..σ_r) V[:, :r]^T          (top-r SVD part, "SVP")
    S = MP(τ − L, ρ)                                 (largest-magnitude fraction ρ of the residual, "MP")
    τ̂ = L + S

Every other tensor keeps its raw τ. The merge is task arithmetic: θ = θ_0 + λ Σ_t w_t τ̂_t,
λ = 1/T by default (the code's λ = 0.2 for 5 languages).
"""

from __future__ import annotations

import torch

from speechmerge.merging.context import TensorContext
from speechmerge.merging.masks import MagnitudeThresholds, trim_below_, trim_to_density_, weighted_sum
from speechmerge.merging.methods.subspace import SVD, svd_seed
from speechmerge.merging.methods.task_vectors import SCALE_1_OVER_T, scale_or_mean
from speechmerge.merging.registry import IdenticalExperts, Param, merge_method
from speechmerge.merging.spectral import low_rank_part

SOURCE = "Zhao, Sun, Zhang, LoRS-Merging, arXiv 2502.17380 (ICASSP 2026); code qmgzhao/LoRS-Merging"
RANK = Param("rank", int, None, "r, an absolute rank; overrides rank_fraction when given", ge=1, nullable=True)
RANK_FRACTION = Param(
    "rank_fraction",
    float,
    0.01,
    "r as a fraction of min(m, n), floored, at least 1 (1% = the code's r = 7 for Whisper small)",
    gt=0,
    le=1,
)
DENSITY = Param("density", float, 0.2, "ρ, the fraction of entries kept by magnitude (per matrix)", gt=0, le=1)


def lors_rank(matrix: torch.Tensor, rank: int | None, rank_fraction: float) -> int:
    """r for one matrix: the absolute rank, or ⌊fraction · min(m, n)⌋ (at least 1), capped at min(m, n)."""
    full = min(matrix.shape)
    r = rank if rank is not None else max(1, int(rank_fraction * full + 1e-9))
    return min(r, full)


def _prune_matrices(tasks: torch.Tensor, ctx: TensorContext, prune, key: tuple, svd: str) -> torch.Tensor:
    """Apply `prune(task, t)` to each task's matrix when the tensor is a block matrix; raw τ otherwise.
    τ̂_t depends on τ_t and on `key` (the pruning's parameters) alone, so it is remembered across
    merges of the same inputs (`TensorContext.remember`)."""
    if ctx.is_matrix:
        for t in range(tasks.shape[0]):
            key_t = (*key, svd, svd_seed(ctx, svd, t))
            tasks[t] = ctx.remember(("pruned", t), key_t, lambda t=t: prune(tasks[t], t))
    return tasks


def _low_rank(task: torch.Tensor, t: int, ctx: TensorContext, rank, rank_fraction, svd: str) -> torch.Tensor:
    """L_r(τ_t), by exact or randomised SVD (seeded by tensor and expert)."""
    return low_rank_part(
        task, lors_rank(task, rank, rank_fraction), svd == "randomised", ctx.generator(t).initial_seed()
    )


@merge_method(
    name="lors",
    title="LoRS-Merging (low-rank + sparse)",
    family="task-vector subspace",
    space="deltas",
    source=SOURCE,
    variant=(
        "Per matrix (not global): exact SVD for L (svd=randomised: a seeded randomised SVD of the top r), "
        "magnitude top-ρ of the residual τ − L (exactly the official code's order). Non-matrix tensors enter raw "
        "with the same λ."
    ),
    params=[RANK, RANK_FRACTION, DENSITY, SCALE_1_OVER_T, SVD],
    blockwise=lambda ctx, params: not ctx.is_matrix,
    identical_experts=IdenticalExperts("expert", {"rank_fraction": 1.0, "density": 1.0}),
)
def lors(tasks, base, weights, ctx: TensorContext, *, rank, rank_fraction, density, scale, svd) -> torch.Tensor:
    """τ̂ = L_r(τ) + MP_ρ(τ − L_r(τ)) per block matrix; θ = θ_0 + λ Σ_t w_t τ̂_t."""

    def prune(task: torch.Tensor, t: int) -> torch.Tensor:
        low = _low_rank(task, t, ctx, rank, rank_fraction, svd)
        residual = task - low
        return low + trim_to_density_(residual.unsqueeze(0), density)[0]

    key = ("lors", rank, rank_fraction, density)
    return weighted_sum(_prune_matrices(tasks, ctx, prune, key, svd), weights).mul_(
        scale_or_mean(scale, tasks.shape[0])
    )


@merge_method(
    name="lors_svp",
    title="LoRS ablation: SVP-only (low-rank part)",
    family="task-vector subspace",
    space="deltas",
    source=SOURCE,
    variant="Per matrix rank-r truncation by exact (or seeded randomised) SVD; non-matrix tensors raw; task "
    "arithmetic with λ.",
    params=[RANK, RANK_FRACTION, SCALE_1_OVER_T, SVD],
    blockwise=lambda ctx, params: not ctx.is_matrix,
    identical_experts=IdenticalExperts("expert", {"rank_fraction": 1.0}),
)
def lors_svp(tasks, base, weights, ctx: TensorContext, *, rank, rank_fraction, scale, svd) -> torch.Tensor:
    """τ̂ = L_r(τ) per block matrix; θ = θ_0 + λ Σ_t w_t τ̂_t."""

    def prune(task: torch.Tensor, t: int) -> torch.Tensor:
        return _low_rank(task, t, ctx, rank, rank_fraction, svd)

    key = ("lors_svp", rank, rank_fraction)
    return weighted_sum(_prune_matrices(tasks, ctx, prune, key, svd), weights).mul_(
        scale_or_mean(scale, tasks.shape[0])
    )


@merge_method(
    name="lors_mp",
    title="LoRS ablation: MP-only (magnitude pruning of task vectors)",
    family="task vectors",
    space="deltas",
    source=SOURCE,
    variant="Per matrix top-ρ by magnitude of each block matrix's τ; non-matrix tensors raw; task arithmetic with λ.",
    params=[DENSITY, SCALE_1_OVER_T],
    tensor_statistics=lambda num_tasks, ctx, params: MagnitudeThresholds(num_tasks) if ctx.is_matrix else None,
    blockwise=True,
    identical_experts=IdenticalExperts("expert", {"density": 1.0}),
)
def lors_mp(tasks, base, weights, ctx: TensorContext, *, density, scale) -> torch.Tensor:
    """τ̂ = MP_ρ(τ) per block matrix; θ = θ_0 + λ Σ_t w_t τ̂_t."""
    if ctx.is_matrix:
        trim_below_(tasks, ctx.tensor_stats)
    return weighted_sum(tasks, weights).mul_(scale_or_mean(scale, tasks.shape[0]))
