"""Task-vector subspace methods: TSV-M, BoostedTSV-M, Iso-C and Iso-CTS.

All four act per 2-D block linear weight (`ctx.is_matrix`) on the task matrices Δ_t = w_t τ_t
(expert weights scale each task vector first, as FusionBench's per-task α; 1 by default), and
merge every other tensor by the mean (1/T) Σ_t w_t τ_t, as the official codes do. The result
is θ = θ_0 + α · merged, α multiplying matrices and non-matrix tensors alike.
"""

from __future__ import annotations

import functools

import torch

from speechmerge.merging.context import TensorContext
from speechmerge.merging.masks import weighted_sum
from speechmerge.merging.registry import Param, merge_method
from speechmerge.merging.spectral import (
    boost_floor,
    gram_svd,
    map_decompositions,
    orthogonalise,
    rounding_tolerance,
    singular_mask,
    singular_values,
    top_singular,
)

TSV_SOURCE = (
    "Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model Merging, CVPR 2025, "
    "arXiv 2412.00081; code AntoAndGar/task_singular_vectors"
)
ISO_SOURCE = (
    "Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces, "
    "ICML 2025, arXiv 2502.04959; code danielm1405/iso-merging"
)
BOOST_SOURCE = (
    "Carvalho, Teixeira, Rolland, Abad, Exploring the potential and limitations of Model Merging for "
    "Multi-Domain Adaptation in ASR, arXiv 2603.05354 (Interspeech 2026); boost from Skorobogat et al., "
    "Subspace-Boosted Model Merging, arXiv 2506.16506"
)

SCALE = Param("scale", float, 1.0, "α, the scale of the merged task vector (the official codes sweep 0.1–3.0)", gt=0)
SVD = Param(
    "svd",
    str,
    "exact",
    "how each task's top singular triplets are found: exact LAPACK SVD, or randomised "
    "(Halko et al., 10 oversamples, 2 power iterations; seeded)",
    choices=("exact", "randomised"),
)
NS_STEPS = Param("ns_steps", int, 5, "Newton–Schulz iterations (orthogonaliser = newton_schulz)", ge=1, le=50)
NS_COEFFICIENTS = Param(
    "ns_coefficients",
    str,
    "muon",
    "Newton–Schulz quintic coefficients: Muon's constant (3.4445, −4.7750, 2.0315) "
    "or the 5-step Polar Express schedule",
    choices=("muon", "polar_express"),
)


def orthogonaliser_param(default: str) -> Param:
    return Param(
        "orthogonaliser",
        str,
        default,
        "how the concatenated singular vectors are decorrelated: polar factor by "
        "SVD (orthogonal Procrustes) or Newton–Schulz",
        choices=("svd", "newton_schulz"),
    )


def non_matrix(ctx: TensorContext, params: dict) -> bool:
    """Non-matrix tensors are averaged, an entry-wise rule: the engine may stream them in blocks."""
    return not ctx.is_matrix


def scaled_tasks_(tasks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """In place: Δ_t = w_t τ_t."""
    return tasks.mul_(weights.to(tasks.device, tasks.dtype).reshape(-1, *([1] * (tasks.dim() - 1))))


def mean_task_vector(tasks: torch.Tensor, weights: torch.Tensor, scale: float) -> torch.Tensor:
    """The rule for non-matrix tensors: α (1/T) Σ_t w_t τ_t."""
    return weighted_sum(tasks, weights).mul_(scale / tasks.shape[0])


def svd_seed(ctx: TensorContext, svd: str, t: int) -> int | None:
    """The seed of task t's randomised SVD (None for the exact one, which has none)."""
    return ctx.generator(t).initial_seed() if svd == "randomised" else None


def rebuild(u, s, vh, orthogonaliser: str, steps: int, coefficients: str, ctx: TensorContext, like, key=None):
    """U⊥ diag(σ) V⊥ᵀ with U and Vᵀ (given as functions that build them) replaced by their
    (approximate) polar factors, the two side by side (`map_decompositions`; `like`: a task
    matrix, which bounds their size). With a `key` naming what U and Vᵀ are built from, the polar
    factors are remembered across merges of the same inputs (`TensorContext.remember`), and U and
    Vᵀ are not built again."""

    def factor(side: str, matrix) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return orthogonalise(matrix(), orthogonaliser, steps, coefficients)

        if key is None:
            return compute()
        return ctx.remember(("polar", side), (orthogonaliser, steps, coefficients, key), compute)

    left, right = map_decompositions(lambda pair: factor(*pair), [("u", u), ("vh", vh)], like)
    return (left * s) @ right


def task_singular_vectors(tasks: torch.Tensor, weights: torch.Tensor, ctx: TensorContext, svd: str, boost=None):
    """TSV-C with compression 1/T of the task matrices Δ_t = w_t τ_t: each task's top
    k = ⌊min(m, n)/T⌋ triplets (at least 1), σ optionally passed through `boost(σ_k, t)`,
    concatenated task by task; returns functions building U and Vᵀ, σ, and a key naming U and Vᵀ
    (for `rebuild`).

    The triplets are τ_t's, remembered across merges of the same inputs, with σ scaled by w_t:
    Δ_t = U (|w_t| σ) Vᵀ up to the sign of U, and the sign is carried by σ instead, which gives
    the same merge since polar(U D) = polar(U) D and Newton–Schulz(U D) = Newton–Schulz(U) D for
    a diagonal sign matrix D. A task of weight 0 contributes no triplet, as its Δ_t is 0."""
    count, rows, cols = tasks.shape
    k = max(1, min(rows, cols) // count)
    present = tuple(bool(w != 0) for w in weights)
    seeds = [svd_seed(ctx, svd, t) for t in range(count)]
    keys = [(k, svd, seed) for seed in seeds]

    def triplets(t: int):
        compute = lambda: top_singular(tasks[t], k, svd == "randomised", seeds[t] or 0)  # noqa: E731
        return ctx.remember(("triplets", t), keys[t], compute)

    nonzero = [t for t in range(count) if present[t]]
    found = dict(zip(nonzero, map_decompositions(triplets, nonzero, tasks[0])))
    parts = []
    for t in range(count):
        if not present[t]:
            parts.append((tasks.new_zeros(rows, k), tasks.new_zeros(k), tasks.new_zeros(k, cols)))
            continue
        u, sigma, vh = found[t]
        magnitude = sigma * abs(float(weights[t]))
        if boost is not None:
            magnitude = boost(magnitude, t)
        parts.append((u, magnitude * (1.0 if weights[t] > 0 else -1.0), vh))
    s = torch.cat([p[1] for p in parts])
    u = functools.partial(torch.cat, [p[0] for p in parts], 1)
    vh = functools.partial(torch.cat, [p[2] for p in parts], 0)
    return u, s, vh, (present, tuple(keys))


@merge_method(
    name="tsv_m",
    revision=2,  # Procrustes guard at ε · σ_max instead of √n · ε · σ_max (polar_factor)
    title="TSV-M (Task Singular Vectors: Merge)",
    family="task-vector subspace",
    space="deltas",
    source=TSV_SOURCE,
    variant=(
        "Per block matrix: each task's top ⌊min(m,n)/T⌋ singular triplets (TSV-C at 1/T; the official "
        "compute_and_sum_svd_mem_reduction), concatenated, U and Vᵀ replaced by their polar factors "
        "(orthogonaliser=svd, the paper's Procrustes; or newton_schulz, the variant of Carvalho et al.), rebuilt; "
        "non-matrix tensors averaged; α on everything. Guards: numerically null triplets of rank-deficient task "
        "matrices (e.g. LoRA experts) are left out, as their singular vectors are arbitrary; the Procrustes polar "
        "factor drops numerically null directions, so near-identical experts merge to their common matrix instead "
        "of rounding noise. Expert weights: the triplets are those of τ_t, with σ scaled by w_t (the SVD of w_t τ_t "
        "up to the sign of U, which σ carries for w_t < 0: the same merge, as the polar factor commutes with column "
        "signs), so an in-memory search over weights and α reuses them; a task of weight 0 contributes no triplet."
    ),
    params=[SCALE, orthogonaliser_param("svd"), SVD, NS_STEPS, NS_COEFFICIENTS],
    blockwise=non_matrix,
)
def tsv_m(tasks, base, weights, ctx: TensorContext, *, scale, orthogonaliser, svd, ns_steps, ns_coefficients):
    """Δ = U⊥ Σ V⊥ᵀ with U = [U_1,k … U_T,k], Σ = diag(σ_1,k … σ_T,k), V = [V_1,k … V_T,k], k = ⌊min(m,n)/T⌋,
    U⊥, V⊥ their polar factors; θ = θ_0 + α Δ (non-matrix: θ_0 + α mean_t τ_t)."""
    if not ctx.is_matrix:
        return mean_task_vector(tasks, weights, scale)
    u, s, vh, key = task_singular_vectors(tasks, weights, ctx, svd)
    return rebuild(u, s, vh, orthogonaliser, ns_steps, ns_coefficients, ctx, tasks[0], key).mul_(scale)


@merge_method(
    name="boosted_tsv_m",
    revision=2,  # Procrustes guard at ε · σ_max instead of √n · ε · σ_max (polar_factor)
    title="BoostedTSV-M (TSV-M with per-task singular-value boosting)",
    family="task-vector subspace",
    space="deltas",
    source=BOOST_SOURCE,
    variant=(
        "TSV-M where, before concatenation, each task's kept singular values are floored at σ_j, j the first "
        "index where the cumulative energy ratio reaches β (Subspace Boosting's rule, applied per task). The paper "
        "leaves two points open; defaults: energy=sigma (ratio of σ, as the Subspace Boosting code; sigma_squared "
        "uses σ²) and spectrum=truncated (ratio over the k kept values that are concatenated; full uses the whole "
        "spectrum of Δ_t, which needs its exact singular values). β = 1 is TSV-M. Orthogonaliser newton_schulz "
        "(5 steps, Muon's quintic coefficients) by default, as the paper."
    ),
    params=[
        SCALE,
        Param(
            "beta",
            float,
            0.3,
            "β, the cumulative-energy threshold of the floor (paper: 0.3 from a 0.1–1.0 sweep)",
            gt=0,
            le=1,
        ),
        Param(
            "energy",
            str,
            "sigma",
            "energy of a singular value in the ratio: σ or σ²",
            choices=("sigma", "sigma_squared"),
        ),
        Param(
            "spectrum",
            str,
            "truncated",
            "spectrum the ratio is taken over: the k kept values or all of Δ_t's",
            choices=("truncated", "full"),
        ),
        orthogonaliser_param("newton_schulz"),
        SVD,
        NS_STEPS,
        NS_COEFFICIENTS,
    ],
    blockwise=non_matrix,
)
def boosted_tsv_m(
    tasks,
    base,
    weights,
    ctx: TensorContext,
    *,
    scale,
    beta,
    energy,
    spectrum,
    orthogonaliser,
    svd,
    ns_steps,
    ns_coefficients,
):
    """TSV-M with σ_t,i ← max(σ_t,i, σ_t,j*), j* = min{j : Σ_{i≤j} e_t,i / Σ_i e_t,i ≥ β}, e = σ (or σ²)."""
    if not ctx.is_matrix:
        return mean_task_vector(tasks, weights, scale)

    def boost(kept: torch.Tensor, t: int) -> torch.Tensor:
        """kept = |w_t| σ_k; the full spectrum of Δ_t is |w_t| times τ_t's."""
        if spectrum == "truncated":
            return kept.clamp(min=boost_floor(kept, beta, energy))
        full = ctx.remember(("singular_values", t), None, lambda: singular_values(tasks[t]))
        return kept.clamp(min=boost_floor(full * abs(float(weights[t])), beta, energy))

    u, s, vh, key = task_singular_vectors(tasks, weights, ctx, svd, boost)
    return rebuild(u, s, vh, orthogonaliser, ns_steps, ns_coefficients, ctx, tasks[0], key).mul_(scale)


@merge_method(
    name="iso_c",
    title="Iso-C (isotropic merging in the common subspace)",
    family="task-vector subspace",
    space="deltas",
    source=ISO_SOURCE,
    variant=(
        "Per block matrix: SVD of the task-arithmetic sum Σ_t w_t τ_t, every singular value replaced by their "
        "mean over all min(m,n) values (the official iso_c); non-matrix tensors averaged; α on everything. "
        "Guard: numerically null directions of the sum (σ at the SVD's rounding level, whose singular vectors "
        "are arbitrary null-space completions in the official code) are left out."
    ),
    params=[SCALE],
    blockwise=non_matrix,
)
def iso_c(tasks, base, weights, ctx: TensorContext, *, scale):
    """Δ_TA = Σ_t w_t τ_t = U Σ Vᵀ; Δ = σ̄ U Vᵀ with σ̄ = mean(σ); θ = θ_0 + α Δ."""
    if not ctx.is_matrix:
        return mean_task_vector(tasks, weights, scale)

    def isotropic() -> torch.Tensor:
        total = weighted_sum(tasks, weights)
        u, s, vh = gram_svd(total)
        return ((u * singular_mask(s, rounding_tolerance(total.shape))) @ vh).mul_(s.mean())

    return ctx.remember("iso_c", tuple(weights.tolist()), isotropic).mul(scale)


def common_dimension(rank: int, tasks: int, fraction: float) -> int:
    """Iso-CTS's k_c = r − round((r − ⌊r f⌋)/T)·T: the task-specific part is divisible by T."""
    return rank - round((rank - int(rank * fraction)) / tasks) * tasks


@merge_method(
    name="iso_cts",
    revision=2,  # Procrustes guard at ε · σ_max instead of √n · ε · σ_max (polar_factor)
    title="Iso-CTS (isotropic merging in common and task-specific subspaces)",
    family="task-vector subspace",
    space="deltas",
    source=ISO_SOURCE,
    variant=(
        "Per block matrix, as the official iso_cts: the top k_c singular directions of Σ_t w_t τ_t (k_c from "
        "common_fraction, adjusted so the rest divides by T) plus, per task, the top (r − k_c)/T directions of "
        "the task matrix with the common left subspace projected out; U and Vᵀ orthogonalised (Procrustes by SVD, "
        "or Newton–Schulz as Carvalho et al.); all r singular values replaced by their mean; non-matrix tensors "
        "averaged; α on everything. Numerically null triplets (arbitrary singular vectors) are left out."
    ),
    params=[
        SCALE,
        Param("common_fraction", float, 0.8, "f, the fraction of the rank given to the common subspace", gt=0, le=1),
        orthogonaliser_param("svd"),
        SVD,
        NS_STEPS,
        NS_COEFFICIENTS,
    ],
    blockwise=non_matrix,
)
def iso_cts(
    tasks, base, weights, ctx: TensorContext, *, scale, common_fraction, orthogonaliser, svd, ns_steps, ns_coefficients
):
    """U_c Σ_c V_cᵀ = top-k_c SVD of Σ_t Δ_t; Δ̄_t = Δ_t − U_c U_cᵀ Δ_t, top s = (r − k_c)/T triplets each;
    U*, V* = [Ū_1 … Ū_T, U_c], [V̄_1 … V̄_T, V_c] orthogonalised; Δ = mean(σ*) U*⊥ V*⊥ᵀ; θ = θ_0 + α Δ."""
    if not ctx.is_matrix:
        return mean_task_vector(tasks, weights, scale)
    count, rows, cols = tasks.shape

    def isotropic() -> torch.Tensor:
        rank = min(rows, cols)
        k_common = common_dimension(rank, count, common_fraction)
        per_task = (rank - k_common) // count
        scaled = scaled_tasks_(tasks, weights)
        u_common, s_common, vh_common = top_singular(scaled.sum(0), k_common)
        blocks = []
        for t in range(count):
            residual = scaled[t] - u_common @ (u_common.mT @ scaled[t])
            blocks.append(top_singular(residual, per_task, svd == "randomised", ctx.generator(t).initial_seed()))
        u_all = torch.cat([b[0] for b in blocks] + [u_common], 1)
        s_all = torch.cat([b[1] for b in blocks] + [s_common])
        vh_all = torch.cat([b[2] for b in blocks] + [vh_common], 0)
        flat = torch.full_like(s_all, float(s_all.mean()))
        return rebuild(lambda: u_all, flat, lambda: vh_all, orthogonaliser, ns_steps, ns_coefficients, ctx, tasks[0])

    seeds = tuple(svd_seed(ctx, svd, t) for t in range(count))
    key = (tuple(weights.tolist()), common_fraction, orthogonaliser, svd, ns_steps, ns_coefficients, seeds)
    return ctx.remember("iso_cts", key, isotropic).mul(scale)
