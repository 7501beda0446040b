"""Parameter-space averaging of whole weights."""

from __future__ import annotations

import torch

from speechmerge.merging.context import TensorContext
from speechmerge.merging.masks import weighted_sum
from speechmerge.merging.registry import IdenticalExperts, merge_method


@merge_method(
    name="soup",
    title="Model soup (weighted average)",
    family="parameter space",
    space="weights",
    source="Wortsman et al., Model soups, ICML 2022, arXiv 2203.05482",
    variant="Uniform soup by default; expert weights are normalised to sum to 1.",
    needs_base=False,
    blockwise=True,
    identical_experts=IdenticalExperts("expert"),
)
def soup(tasks: torch.Tensor, base, weights: torch.Tensor, ctx: TensorContext) -> torch.Tensor:
    """θ = Σ_t w_t θ_t / Σ_t w_t."""
    return weighted_sum(tasks, weights / weights.sum())
