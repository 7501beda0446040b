"""Data-aware methods: each expert's data statistics (speechmerge.datastats), handed to the method
as `ctx.data` (one `Statistics` per expert, in the recipe's order), shape the merge. The maths is
in speechmerge/merging/data_aware.py; these declarations choose what each tensor gets."""

from __future__ import annotations

import torch

from speechmerge.errors import SpeechmergeError
from speechmerge.merging.context import TensorContext
from speechmerge.merging.data_aware import (
    DEFAULT_ALPHA,
    DEFAULT_FISHER_FLOOR,
    average,
    fisher_merge,
    mean_gram,
    regmean,
)
from speechmerge.merging.masks import weighted_sum
from speechmerge.merging.registry import IdenticalExperts, Param, merge_method


def _statistics(ctx: TensorContext, method: str, present) -> list | None:
    """The experts' statistics if every one has this tensor's (`present(s)`), None if none has;
    a mix is an error (statistics gathered with different settings or on different parts)."""
    if ctx.data is None:
        raise SpeechmergeError(f"{ctx.name}: {method} needs each expert's data statistics; give every expert data:")
    have = [present(s) for s in ctx.data]
    if all(have):
        return list(ctx.data)
    if any(have):
        missing = ", ".join(str(s.folder) for s, h in zip(ctx.data, have) if not h)
        raise SpeechmergeError(
            f"{ctx.name}: {method}: some experts have statistics for this tensor and {missing} has none; "
            "gather every expert's statistics on the same parts of the model"
        )
    return None


def _rows(tensor: torch.Tensor, ctx: TensorContext, rows: int) -> torch.Tensor:
    """The rows of a whole-tensor statistic that this (row block of the) merge covers."""
    return tensor[ctx.row_offset : ctx.row_offset + rows]


@merge_method(
    name="regmean",
    title="RegMean",
    family="data-aware",
    space="weights",
    source="Jin et al., Dataless Knowledge Fusion by Merging Weights of Language Models, ICLR 2023, arXiv 2212.09849",
    variant=(
        "Per linear weight with a Gram matrix in every expert's statistics: the per-row mean Gram X_tᵀX_t/N_t "
        "(as FusionBench and the authors' code merge), off-diagonal entries scaled by alpha, solved in float64; "
        "every other tensor (biases, norms, embeddings, convolutions, layers without statistics) is the plain "
        "average. Expert weights are not used. Against FusionBench 0.2.33's merging_with_regmean_weights given the "
        "same weights and mean Grams (four demo experts, 48 utterances each, 60 decoder linear weights, alpha 0.1): "
        "largest relative Frobenius difference 2.7e-8 with its float64 inputs (our float32 output's rounding) and "
        "0.96 with float32 inputs (its torch.inverse runs in float32, ours solves in float64) "
        "(benchmarks/bench_data_aware.py --compare; docs/data-aware.md)."
    ),
    params=[
        Param(
            "alpha",
            float,
            DEFAULT_ALPHA,
            "α: scale of the Gram matrices' off-diagonal entries (1: none removed)",
            ge=0.0,
            le=1.0,
        ),
        Param(
            "ridge",
            float,
            0.0,
            "added as ridge·mean(diag Σ G̃)·I only when Σ G̃ is singular; 0: a singular system is an error",
            ge=0.0,
        ),
    ],
    needs_base=False,
    blockwise=True,
    identical_experts=IdenticalExperts("expert"),
    needs=("gram",),
)
def regmean_method(
    tasks: torch.Tensor, base, weights: torch.Tensor, ctx: TensorContext, *, alpha, ridge
) -> torch.Tensor:
    """W = (Σ_t G̃_t)⁻¹ Σ_t G̃_t W_t per linear weight ([out, in]; G̃ = α G + (1 − α) diag G, G_t the Gram matrix
    of the layer's inputs on expert t's data); other tensors θ = mean_t θ_t."""
    found = _statistics(ctx, "regmean", lambda s: s.has_gram(ctx.name)) if tasks.dim() == 3 else None
    if found is None:
        return average(tasks)
    grams = torch.stack([mean_gram(*s.gram(ctx.name)) for s in found]).to(tasks.device)
    return regmean(tasks, grams, alpha, ridge, ctx.name)


@merge_method(
    name="fisher",
    title="Fisher merging",
    family="data-aware",
    space="weights",
    source="Matena & Raffel, Merging Models with Fisher-Weighted Averaging, NeurIPS 2022, arXiv 2111.09832",
    variant=(
        "Diagonal empirical Fisher of each expert on its own data (squared per-utterance gradients of the "
        "reference tokens' log-likelihood, averaged); λ_t are the experts' weights; Fisher entries floored at eps. "
        "A tensor no expert has a Fisher for is the λ-weighted average."
    ),
    params=[
        Param(
            "eps",
            float,
            DEFAULT_FISHER_FLOOR,
            "ε: floor on every Fisher entry (an entry no data touches gets the λ-average)",
            gt=0.0,
        ),
    ],
    needs_base=False,
    blockwise=True,
    identical_experts=IdenticalExperts("expert"),
    needs=("fisher",),
)
def fisher_method(tasks: torch.Tensor, base, weights: torch.Tensor, ctx: TensorContext, *, eps) -> torch.Tensor:
    """θ = Σ_t λ_t F_t θ_t / Σ_t λ_t F_t entry by entry (F_t ≥ ε the diagonal Fisher of expert t, λ_t its weight)."""
    found = _statistics(ctx, "fisher", lambda s: s.has_fisher(ctx.name))
    if found is None:
        return weighted_sum(tasks, weights / weights.sum())
    fishers = torch.stack([_rows(s.fisher(ctx.name), ctx, tasks.shape[1]) for s in found]).to(tasks.device)
    return fisher_merge(tasks, fishers.reshape(tasks.shape), weights / weights.sum(), eps)
