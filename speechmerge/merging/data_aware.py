"""The maths of the data-aware merges, as pure functions of stacked tensors.

RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023).
For a linear layer y = W x (Hugging Face's `nn.Linear` stores W as [out, in]) and expert t with
layer inputs X_t [N_t, in] on its own data, the merged W minimises

    Σ_t ‖X_t Wᵀ − X_t W_tᵀ‖²    whose normal equations give    Wᵀ = (Σ_t G_t)⁻¹ Σ_t G_t W_tᵀ,

with the Gram matrices G_t = X_tᵀ X_t [in, in]. The paper shrinks the off-diagonal entries,
G̃_t = α G_t + (1 − α) diag(G_t), α ∈ [0, 1]: α = 1 is the exact regression, α = 0 a
per-input-feature weighted average (each column W[:, i] weighted by Σ_rows x_i²). The authors'
code (bloomberg/dataless-model-merging, `regmean_reduce_nondiag`) defaults to no shrinking (α = 1)
and sets α per experiment; FusionBench calls α `reduce_non_diagonal_ratio`, 0.1 in its base
`regmean.yaml` and 0.6 in its CLIP and GPT-2 configs. `DEFAULT_ALPHA` is FusionBench's base value.
FusionBench (and the authors' experiment configs, `regmean_mean: true`) feed the mean Gram
X_tᵀX_t / N_t of each expert, so experts with more data do not dominate; `mean_gram` gives it
from the stored sum and row count.

Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022):
θ = Σ_t λ_t F_t θ_t / Σ_t λ_t F_t per parameter entry, F_t the diagonal Fisher of expert t.

RegMean++ (Nguyen et al., arXiv 2508.03121; FusionBench's `regmean_plusplus`) is not here: it
merges layer by layer and computes the Gram matrices of layer l on the outputs of the already
*merged* layers 0..l−1, so its statistics depend on the merge itself and cannot be gathered once
per expert and streamed; and FusionBench defines it for one stack of layers (CLIP's vision tower),
leaving open what a Whisper decoder's cross-attention should read (docs/data-aware.md).
"""

from __future__ import annotations

from typing import Optional

import torch

from speechmerge.errors import SpeechmergeError

DEFAULT_ALPHA = 0.1  # FusionBench config/method/regmean/regmean.yaml `reduce_non_diagonal_ratio`
RCOND_FLOOR = 1e-12  # Σ G̃ counts as singular when a Cholesky pivot of its unit-diagonal scaling is below this
DEFAULT_FISHER_FLOOR = 1e-10  # ε: Fisher entries are raised to at least this (RegMean authors: 1e-10)


def mean_gram(gram_sum: torch.Tensor, rows: int) -> torch.Tensor:
    """X_tᵀX_t / N_t: the per-row mean Gram matrix that FusionBench and the authors' code merge with."""
    return gram_sum / rows


def shrink_off_diagonal(grams: torch.Tensor, alpha: float) -> torch.Tensor:
    """G̃ = α G + (1 − α) diag(G) for a stack [T, in, in] (RegMean's off-diagonal scale α ∈ [0, 1])."""
    if not 0.0 <= alpha <= 1.0:
        raise SpeechmergeError(
            f"regmean: alpha {alpha} is outside [0, 1]; 1 keeps the Gram matrices, 0 keeps only their diagonals"
        )
    diagonal = torch.diag_embed(torch.diagonal(grams, dim1=-2, dim2=-1))
    return alpha * grams + (1.0 - alpha) * diagonal


def regmean(
    weights: torch.Tensor, grams: torch.Tensor, alpha: float = DEFAULT_ALPHA, ridge: float = 0.0, name: str = "weight"
) -> torch.Tensor:
    """RegMean's merged linear weight [out, in] from experts' weights [T, out, in] and Grams [T, in, in].

    Solves (Σ_t G̃_t) Wᵀ = Σ_t G̃_t W_tᵀ in float64 by Cholesky (see `_solve_or_none`). When Σ G̃ is
    singular and `ridge` > 0, the system is solved with ridge · mean(diag Σ G̃) · I added
    (a ridge relative to the Gram's scale); with `ridge` 0 a singular system is an error naming `name`."""
    if weights.dim() != 3 or grams.dim() != 3 or grams.shape[1:] != (weights.shape[2], weights.shape[2]):
        raise SpeechmergeError(
            f"{name}: regmean needs weights [T, out, in] and Gram matrices [T, in, in]; "
            f"got {tuple(weights.shape)} and {tuple(grams.shape)}"
        )
    shrunk = shrink_off_diagonal(grams.to(torch.float64), alpha)
    system = shrunk.sum(0)
    right = torch.einsum("tij,toj->io", shrunk, weights.to(torch.float64))  # Σ_t G̃_t W_tᵀ [in, out]
    solution = _solve_or_none(system, right)
    if solution is None:
        if ridge <= 0.0:
            raise SpeechmergeError(
                f"{name}: the summed Gram matrix [{system.shape[0]}x{system.shape[0]}] is singular "
                "(an input feature is zero on every row, or fewer independent rows than features); "
                "give regmean a ridge (e.g. 1e-6) or more utterances"
            )
        scale = torch.diagonal(system).mean().clamp_min(torch.finfo(torch.float64).tiny)
        solution = _solve_or_none(system + ridge * scale * torch.eye(system.shape[0], dtype=torch.float64), right)
        if solution is None:
            raise SpeechmergeError(
                f"{name}: the summed Gram matrix stays singular with ridge {ridge}; give a larger ridge"
            )
    return solution.T.to(weights.dtype)


def _solve_or_none(system: torch.Tensor, right: torch.Tensor) -> Optional[torch.Tensor]:
    """X with system · X = right for a symmetric positive semi-definite `system`, or None when it is singular.

    Solved by Cholesky after Jacobi scaling S = D^-1/2 A D^-1/2 (D = diag A; the scaled matrix has
    a unit diagonal, so its pivots measure collinearity, not the features' scales). Singular: a zero
    diagonal entry, a failed factorisation, or a pivot of S below `RCOND_FLOOR`."""
    diagonal = torch.diagonal(system)
    if not bool((diagonal > 0).all()):
        return None
    inverse_root = diagonal.rsqrt()
    scaled = inverse_root[:, None] * system * inverse_root[None, :]
    factor, info = torch.linalg.cholesky_ex(scaled)
    if int(info) != 0:
        return None
    pivots = torch.diagonal(factor).square()
    if not bool(torch.isfinite(pivots).all()) or float(pivots.min()) < RCOND_FLOOR:
        return None
    return inverse_root[:, None] * torch.cholesky_solve(inverse_root[:, None] * right, factor)


def average(params: torch.Tensor) -> torch.Tensor:
    """The plain mean over experts [T, ...] -> [...]: what RegMean does to biases, norms, embeddings, convolutions."""
    return params.to(torch.float64).mean(0).to(params.dtype)


def fisher_merge(
    params: torch.Tensor,
    fishers: torch.Tensor,
    lambdas: Optional[torch.Tensor] = None,
    eps: float = DEFAULT_FISHER_FLOOR,
) -> torch.Tensor:
    """Fisher-weighted average Σ_t λ_t F_t θ_t / Σ_t λ_t F_t of experts' parameters [T, ...].

    `fishers` [T, ...] are diagonal Fishers, floored at `eps` (so an entry no expert's data touches
    gets the λ-weighted average); `lambdas` [T] default to 1/T."""
    if params.shape != fishers.shape:
        raise SpeechmergeError(
            f"fisher merging: parameters {tuple(params.shape)} and Fishers {tuple(fishers.shape)} differ in shape"
        )
    count = params.shape[0]
    lambdas = torch.full((count,), 1.0 / count) if lambdas is None else torch.as_tensor(lambdas)
    if lambdas.shape != (count,) or bool((lambdas < 0).any()) or float(lambdas.sum()) <= 0:
        raise SpeechmergeError(
            f"fisher merging: needs {count} non-negative lambdas with a positive sum, got {lambdas.tolist()}"
        )
    shape = (count,) + (1,) * (params.dim() - 1)
    weights = lambdas.to(torch.float64).reshape(shape) * fishers.to(torch.float64).clamp_min(eps)
    merged = (weights * params.to(torch.float64)).sum(0) / weights.sum(0)
    return merged.to(params.dtype)
