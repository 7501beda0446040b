"""Task-vector methods: task arithmetic, TIES and DARE, over τ_t = θ_t − θ_0."""

from __future__ import annotations

import torch

from speechmerge.merging.context import TensorContext
from speechmerge.merging.masks import (
    MagnitudeThresholds,
    disjoint_mean,
    elect_sign,
    map_entries,
    random_drop_,
    trim_below_,
    weighted_sum,
)
from speechmerge.merging.registry import IdenticalExperts, Param, merge_method

SCALE_1_OVER_T = Param(
    "scale", float, None, "λ, the scale of the merged task vector; default (null) is 1/T", gt=0, nullable=True
)


def scale_or_mean(scale: float | None, num_tasks: int) -> float:
    """λ as given, or 1/T when the recipe leaves it out."""
    return 1.0 / num_tasks if scale is None else scale


@merge_method(
    name="task_arithmetic",
    title="Task arithmetic",
    family="task vectors",
    space="deltas",
    source="Ilharco et al., Editing models with task arithmetic, ICLR 2023, arXiv 2212.04089",
    variant="λ multiplies the weighted sum of task vectors; λ defaults to 1/T (an average), as in LoRS-Merging's code.",
    params=[SCALE_1_OVER_T],
    blockwise=True,
    identical_experts=IdenticalExperts("expert"),
)
def task_arithmetic(tasks: torch.Tensor, base, weights: torch.Tensor, ctx: TensorContext, *, scale) -> torch.Tensor:
    """θ = θ_0 + λ Σ_t w_t τ_t."""
    return weighted_sum(tasks, weights).mul_(scale_or_mean(scale, tasks.shape[0]))


def ties_model_statistics(num_tasks: int, ctx: TensorContext, params: dict):
    """The global (paper) variant's per-task threshold over the whole model."""
    return MagnitudeThresholds(num_tasks) if params["topk"] == "global" else None


def ties_tensor_statistics(num_tasks: int, ctx: TensorContext, params: dict):
    """The per-tensor variant's per-task threshold over this tensor."""
    return MagnitudeThresholds(num_tasks) if params["topk"] == "per_tensor" else None


def sign_elected_mean(
    trimmed: torch.Tensor, weights: torch.Tensor, thresholds: list[float] | None = None
) -> torch.Tensor:
    """TIES steps 2-3: elect each entry's sign by the mass of the weighted trimmed task
    vectors, then take the weighted mean of the values that agree with it. With `thresholds`
    (one per task), step 1's trim is done here too, in place chunk by chunk (|x| below its
    task's threshold set to 0), so the tasks are read once instead of trimmed in a pass of their own."""

    def merge(sub: torch.Tensor) -> torch.Tensor:
        if thresholds is not None:
            trim_below_(sub, thresholds)  # each row of a chunk is a contiguous slice of its task
        return disjoint_mean(sub, elect_sign(sub, weights), weights)

    return map_entries(trimmed, merge)


@merge_method(
    name="ties",
    title="TIES-Merging",
    family="task vectors",
    space="deltas",
    source="Yadav et al., TIES-Merging, NeurIPS 2023, arXiv 2306.01708; code prateeky2806/ties-merging",
    variant=(
        "Trim: keep each task vector's top-k by magnitude over the whole model (topk=global, the official "
        "code's rule; found exactly by a streaming histogram) or per tensor (topk=per_tensor, as mergekit/PEFT). "
        "Sign elected by mass (sign of the sum of the weighted trimmed vectors); disjoint weighted mean over "
        "agreeing tasks (the paper's mean when weights are equal); then λ."
    ),
    params=[
        Param("density", float, 0.2, "k, the fraction of each task vector kept by magnitude", gt=0, le=1),
        Param("scale", float, 1.0, "λ, the scale of the merged task vector", gt=0),
        Param(
            "topk",
            str,
            "global",
            "where the top-k is taken: over the whole model or per tensor",
            choices=("global", "per_tensor"),
        ),
    ],
    statistics=ties_model_statistics,
    tensor_statistics=ties_tensor_statistics,
    blockwise=True,
    identical_experts=IdenticalExperts("expert", {"density": 1.0}),
)
def ties(tasks: torch.Tensor, base, weights: torch.Tensor, ctx: TensorContext, *, density, scale, topk) -> torch.Tensor:
    """τ̂_t = trim_k(τ_t); γ = sign(Σ_t w_t τ̂_t); τ_m = Σ_{t: sign τ̂_t = γ} w_t τ̂_t / Σ_{…} w_t; θ = θ_0 + λ τ_m."""
    return sign_elected_mean(tasks, weights, ctx.stats if topk == "global" else ctx.tensor_stats).mul_(scale)


@merge_method(
    name="dare",
    title="DARE (drop and rescale)",
    family="task vectors",
    space="deltas",
    source="Yu et al., Language models are Super Mario, ICML 2024, arXiv 2311.03099; code yule-BUAA/MergeLM",
    variant=(
        "Each entry of each task vector is dropped with probability p and survivors are rescaled by 1/(1−p) "
        "(the paper's rule, so E[DARE(τ)] = τ), from a generator seeded by (seed, tensor, expert). Then "
        "combine=task_arithmetic (λ Σ w_t τ̂_t, λ default 1/T) or combine=ties (sign election and disjoint "
        "mean on the dropped vectors, λ default 1; DARE's random drop replaces TIES's magnitude trim, as "
        "mergekit's dare_ties)."
    ),
    params=[
        Param("drop", float, 0.9, "p, the probability of dropping each task-vector entry", ge=0, lt=1),
        Param(
            "combine",
            str,
            "task_arithmetic",
            "how the rescaled task vectors are merged",
            choices=("task_arithmetic", "ties"),
        ),
        Param(
            "scale", float, None, "λ; default (null) is 1/T with task_arithmetic and 1 with ties", gt=0, nullable=True
        ),
    ],
    randomised=True,
    blockwise=True,
    identical_experts=IdenticalExperts("expert", {"drop": 0.0}),
)
def dare(tasks: torch.Tensor, base, weights: torch.Tensor, ctx: TensorContext, *, drop, combine, scale) -> torch.Tensor:
    """τ̂_t = m_t ⊙ τ_t / (1 − p), m_t ~ Bernoulli(1 − p); then task arithmetic or TIES's sign election."""
    keep = 1.0 - drop
    for t in range(tasks.shape[0]):
        random_drop_(tasks[t], keep, ctx, stream=t)
    # The rescale 1/(1 − p) is common to every task, so it is applied once, to the merge: the
    # sign election and the disjoint mean commute with a positive scale as the weighted sum does.
    if combine == "ties":
        return sign_elected_mean(tasks, weights).mul_((1.0 if scale is None else scale) / keep)
    return weighted_sum(tasks, weights).mul_(scale_or_mean(scale, tasks.shape[0]) / keep)
