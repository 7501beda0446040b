"""Task-vector sparsification methods beyond TIES and DARE: PCB, SCE, Model Breadcrumbs, DELLA.

Every tensor is sparsified (as TIES and DARE here, mergekit and the official codes, which
flatten the whole model); a recipe override can exempt tensors. Whole-tensor quantities
(min/max, softmax normalisers, k-th largest values, per-task energies) are per-tensor
statistics passes over chunks of entries, after which each method is entry-wise (row-wise for
DELLA and row-scoped Breadcrumbs): the engine may stream a large tensor in row blocks, and
temporaries stay at chunk size whatever the tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from speechmerge.merging import masks
from speechmerge.merging.context import TensorContext
from speechmerge.merging.masks import (
    MagnitudeSelector,
    disjoint_mean,
    elect_sign,
    kept_count,
    map_entries,
    uniform_draws,
    weighted_sum,
)
from speechmerge.merging.methods.task_vectors import sign_elected_mean
from speechmerge.merging.registry import IdenticalExperts, Param, merge_method


def entry_chunks(tasks: torch.Tensor, per_entry: int = 1) -> Iterator[torch.Tensor]:
    """[T, c] views over the flattened entries of every task, c·T·per_entry ≈ masks.CHUNK."""
    flat = tasks.reshape(tasks.shape[0], -1)
    step = max(1, masks.CHUNK // (tasks.shape[0] * per_entry))
    return iter(flat.split(step, dim=1))


def row_blocks(task: torch.Tensor) -> Iterator[torch.Tensor]:
    """[rows, columns] views of one task tensor seen as rows (1-D: a single row), ≈ CHUNK entries each."""
    rows = task.reshape(1, -1) if task.dim() == 1 else task.reshape(task.shape[0], -1)
    return iter(rows.split(max(1, masks.CHUNK // rows.shape[1]), dim=0))


# --- PCB ---------------------------------------------------------------------------------


class BalancingPass:
    """PCB's per-tensor statistics, one row per softmax term: the inter terms τ_i ⊙ τ_j for every
    pair i ≤ j (sharpness s = 1), then the intra terms τ_i ⊙ τ_i (s = T). Round 0: min and max of
    each product (for Norm); round 1: softmax normalisers Z = Σ exp(s (Norm − 1)) / D; rounds 2–3:
    each task's exact top-⌊r·D⌋ threshold of β (count, refine)."""

    rounds = 4

    def __init__(self, num_tasks: int, ctx: TensorContext, params: dict):
        self.count, self.density = num_tasks, params["density"]
        pairs, diagonal = torch.triu_indices(num_tasks, num_tasks), torch.arange(num_tasks)
        self.pairs = pairs.shape[1]
        self.first, self.second = torch.cat([pairs[0], diagonal]), torch.cat([pairs[1], diagonal])
        self.sharpness = torch.cat([torch.ones(self.pairs), torch.full((num_tasks,), float(num_tasks))])[:, None]
        self.low = torch.full((self.rows, 1), torch.inf)
        self.high = torch.full((self.rows, 1), -torch.inf)
        self.normaliser = torch.zeros(self.rows, 1)
        self.entries = 0
        self.selectors = [MagnitudeSelector() for _ in range(num_tasks)]

    @property
    def rows(self) -> int:
        return self.first.numel()

    def _to(self, device: torch.device) -> None:
        for name in ("first", "second", "sharpness", "low", "high", "normaliser"):
            setattr(self, name, getattr(self, name).to(device))

    def products(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk[self.first] * chunk[self.second]

    def exponentials(self, products: torch.Tensor) -> torch.Tensor:
        """exp(s (Norm − 1)), Norm the min–max normalisation over the tensor (0 where constant)."""
        spread = self.high - self.low
        norm = torch.where(spread > 0, (products - self.low) / torch.where(spread > 0, spread, 1.0), 0.0)
        return torch.exp(self.sharpness * (norm - 1.0))

    def balance(self, chunk: torch.Tensor) -> torch.Tensor:
        """β_i = intra_i ⊙ inter_i on a chunk [T, c], each softmax multiplied by D (a constant)."""
        softmax = self.exponentials(self.products(chunk)) / self.normaliser
        inter = torch.zeros_like(chunk).index_add_(0, self.first[: self.pairs], softmax[: self.pairs])
        off_diagonal = self.first[: self.pairs] != self.second[: self.pairs]
        inter.index_add_(0, self.second[: self.pairs][off_diagonal], softmax[: self.pairs][off_diagonal])
        return softmax[self.pairs :] * inter

    def observe(self, round_index: int, tasks: torch.Tensor, ctx: TensorContext, params: dict) -> None:
        self._to(tasks.device)
        for chunk in entry_chunks(tasks, self.rows):
            if round_index == 0:
                products = self.products(chunk)
                torch.minimum(self.low, products.amin(1, keepdim=True), out=self.low)
                torch.maximum(self.high, products.amax(1, keepdim=True), out=self.high)
                self.entries += chunk.shape[1]
            elif round_index == 1:
                self.normaliser += self.exponentials(self.products(chunk)).sum(1, keepdim=True)
            else:
                for selector, row in zip(self.selectors, self.balance(chunk)):
                    selector.count(row) if round_index == 2 else selector.refine(row)

    def end_round(self, round_index: int) -> None:
        if round_index == 1:
            self.normaliser /= self.entries
        elif round_index == 2:
            for selector in self.selectors:
                selector.narrow(kept_count(self.entries, self.density))

    def result(self) -> BalancingPass:
        self.thresholds = torch.tensor([s.threshold() for s in self.selectors], device=self.low.device)[:, None]
        return self


@merge_method(
    name="pcb",
    title="PCB-Merging (parameter competition balancing)",
    family="task vectors",
    space="deltas",
    source="Du et al., Parameter Competition Balancing for Model Merging, NeurIPS 2024, arXiv 2410.02396; code duguodong7/pcb-merging",
    variant=(
        "The paper's equations per tensor (as mergekit; the official scripts flatten the whole model and add "
        "clamping and tanh variants): Norm is min–max normalisation over the tensor (the official code's "
        "`normalize`), softmaxes run over the tensor's entries, each task keeps its top ⌊density·D⌋ balancing "
        "scores, and the merge is the per-entry weighted mean Σ_t β̂_t w_t τ_t / Σ_t β̂_t (the paper's rescale; "
        "mergekit divides by the sum over all entries instead, which shrinks its update towards zero). Expert "
        "weights scale the task vectors. No evolutionary search of per-task λ."
    ),
    params=[
        Param(
            "density",
            float,
            0.1,
            "r, the fraction of each task's balancing scores kept (official script: 0.1)",
            gt=0,
            le=1,
        ),
        Param("scale", float, 1.0, "λ, the scale of the merged task vector (the official search starts at 1.0)", gt=0),
    ],
    tensor_statistics=BalancingPass,
    blockwise=True,
    identical_experts=IdenticalExperts("expert", {"density": 1.0}),
)
def pcb(tasks, base, weights, ctx: TensorContext, *, density, scale):
    """β_intra,t = softmax(T·Norm(τ_t ⊙ τ_t)); β_inter,t = Σ_j softmax(Norm(τ_t ⊙ τ_j)); β_t = β_intra,t ⊙ β_inter,t;
    β̂_t = β_t ⊙ 1[β_t ≥ top-r threshold]; τ_m = Σ_t β̂_t w_t τ_t / Σ_t β̂_t; θ = θ_0 + λ τ_m."""
    stats: BalancingPass = ctx.tensor_stats
    w = weights.to(tasks.device, tasks.dtype)[:, None]

    def merge(chunk: torch.Tensor) -> torch.Tensor:
        beta = stats.balance(chunk)
        beta = torch.where(beta >= stats.thresholds, beta, 0.0)
        total = beta.sum(0)
        return torch.where(total > 0, (beta * w * chunk).sum(0) / torch.where(total > 0, total, 1.0), 0.0)

    return map_entries(tasks, merge).mul_(scale)


# --- SCE ---------------------------------------------------------------------------------


class VarianceSelection:
    """SCE's per-tensor statistics: rounds 0–1 find the variance threshold of Select (mergekit's
    rule: the top ⌊τ · #(entries with non-zero variance)⌋ cross-task variances; τ = 1 keeps all),
    round 2 sums each task's squared selected entries for Calculate."""

    rounds = 3

    def __init__(self, num_tasks: int, ctx: TensorContext, params: dict):
        self.fraction = params["select_topk"]
        self.selector = MagnitudeSelector()
        self.nonzero = 0
        self.threshold = 0.0  # every variance is ≥ 0: keep all unless selecting
        self.energy = torch.zeros(num_tasks, dtype=torch.float64)

    def observe(self, round_index: int, tasks: torch.Tensor, ctx: TensorContext, params: dict) -> None:
        if self.fraction >= 1 and round_index < 2:
            return
        for chunk in entry_chunks(tasks):
            variance = chunk.var(0, unbiased=False)
            if round_index == 0:
                self.selector.count(variance)
                self.nonzero += int(torch.count_nonzero(variance))
            elif round_index == 1:
                self.selector.refine(variance)
            else:
                self.energy += (chunk * (variance >= self.threshold)).square().sum(1).double().cpu()

    def end_round(self, round_index: int) -> None:
        if self.fraction >= 1:
            return
        if round_index == 0:
            self.selector.narrow(int(self.fraction * self.nonzero))
        elif round_index == 1:
            self.threshold = self.selector.threshold()

    def result(self) -> VarianceSelection:
        return self


@merge_method(
    name="sce",
    title="SCE (select, calculate, erase)",
    family="task vectors",
    space="deltas",
    source="Wan et al., FuseChat: Knowledge Fusion of Chat Models, arXiv 2408.07990; mergekit's sce; config FuseAI/FuseChat",
    variant=(
        "Per tensor, as mergekit's sce: Select keeps the entries in the top select_topk fraction of cross-task "
        "variance (of the entries with non-zero variance; 1 keeps all); Calculate gives each task "
        "η_t ∝ w_t ‖τ̂_t‖² (mean square of the selected task vector, normalised over tasks; expert weights "
        "multiply it); Erase elects each entry's sign by the unweighted sum Σ_t τ̂_t and keeps the agreeing tasks; "
        "τ_m = Σ_agree η_t τ̂_t / Σ_agree η_t; then λ."
    ),
    params=[
        Param(
            "select_topk",
            float,
            0.1,
            "τ, the fraction of entries kept by variance (FuseChat's config: 0.1)",
            gt=0,
            le=1,
        ),
        Param("scale", float, 1.0, "λ, the scale of the merged task vector (SCE itself has none: 1)", gt=0),
    ],
    tensor_statistics=VarianceSelection,
    blockwise=True,
    identical_experts=IdenticalExperts("expert", {"select_topk": 1.0}),
)
def sce(tasks, base, weights, ctx: TensorContext, *, select_topk, scale):
    """τ̂_t = τ_t ⊙ 1[Var_t τ ≥ top-τ threshold]; η_t = w_t ‖τ̂_t‖² / Σ_s w_s ‖τ̂_s‖²; γ = sign(Σ_t τ̂_t);
    τ_m = Σ_{t: sign τ̂_t = γ} η_t τ̂_t / Σ_{…} η_t; θ = θ_0 + λ τ_m."""
    stats: VarianceSelection = ctx.tensor_stats
    energy = stats.energy * weights.double()
    eta = (energy / energy.sum() if energy.sum() > 0 else torch.full_like(energy, 1.0 / len(energy))).float()
    ones = torch.ones_like(eta)

    def merge(chunk: torch.Tensor) -> torch.Tensor:
        selected = chunk * (chunk.var(0, unbiased=False) >= stats.threshold)
        return disjoint_mean(selected, elect_sign(selected, ones), eta)

    return map_entries(tasks, merge).mul_(scale)


# --- Model Breadcrumbs -------------------------------------------------------------------


def band_(block: torch.Tensor, high: torch.Tensor | float, low: torch.Tensor | float) -> None:
    """In place: keep entries with low ≤ |x| < high, zero the rest."""
    magnitude = block.abs()
    block.mul_((magnitude >= low) & (magnitude < high))


def row_kth(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the k-th largest value (inf for k = 0, 0 for k ≥ the row length), shape [rows, 1]."""
    n = magnitudes.shape[1]
    if k <= 0:
        return torch.full((magnitudes.shape[0], 1), torch.inf, device=magnitudes.device)
    if k >= n:
        return torch.zeros(magnitudes.shape[0], 1, device=magnitudes.device)
    return magnitudes.kthvalue(n - k + 1, dim=1, keepdim=True).values


def band_counts(n: int, density: float, gamma: float) -> tuple[int, int]:
    """(⌊γn⌋, ⌊γn⌋ + ⌊density·n⌋): the ranks (by |x|, descending) that bound the kept band."""
    top = int(gamma * n)
    return top, min(n, top + kept_count(n, density))


class BandThresholds:
    """Breadcrumbs' per-tensor statistics (scope=tensor): per task, the exact ⌊γn⌋-th and
    (⌊γn⌋ + ⌊βn⌋)-th largest |τ| over the tensor, in two rounds (count, refine)."""

    rounds = 2

    def __init__(self, num_tasks: int, params: dict):
        self.density, self.gamma = params["density"], params["gamma"]
        self.high = [MagnitudeSelector() for _ in range(num_tasks)]
        self.low = [MagnitudeSelector() for _ in range(num_tasks)]

    def observe(self, round_index: int, tasks: torch.Tensor, ctx: TensorContext, params: dict) -> None:
        for high, low, row in zip(self.high, self.low, tasks):
            for selector in (high, low):
                selector.count(row) if round_index == 0 else selector.refine(row)

    def end_round(self, round_index: int) -> None:
        if round_index == 0:
            for high, low in zip(self.high, self.low):
                top, bottom = band_counts(high.total, self.density, self.gamma)
                high.narrow(top)
                low.narrow(bottom)

    def result(self) -> list[tuple[float, float]]:
        return [(high.threshold(), low.threshold()) for high, low in zip(self.high, self.low)]


def breadcrumbs_statistics(num_tasks: int, ctx: TensorContext, params: dict):
    return BandThresholds(num_tasks, params) if params["scope"] == "tensor" else None


def row_wise(ctx: TensorContext, params: dict) -> bool:
    """A tensor may be streamed in row blocks when each row is whole in a block (not 1-D ones)."""
    return ctx.role.role not in ("norm", "bias")


@merge_method(
    name="breadcrumbs",
    title="Model Breadcrumbs",
    family="task vectors",
    space="deltas",
    source="Davari, Belilovsky, Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks, ECCV 2024, "
    "arXiv 2312.06795; code rezazzr/breadcrumbs",
    variant=(
        "Each task vector drops its top ⌊γn⌋ entries by magnitude (outliers) and keeps the next ⌊density·n⌋ "
        "(the official TaskVectorMiddleKeep, remove first), per tensor (scope=tensor, the paper's per-layer "
        "rule, as mergekit) or per row (scope=row, the official code's topk along the last axis); then "
        "θ_0 + λ Σ_t w_t τ̂_t. γ = 0 keeps the top ⌊density·n⌋ (mergekit keeps nothing there)."
    ),
    params=[
        Param(
            "density",
            float,
            0.1,
            "β, the fraction of each tensor kept below the outliers (rezazzr/breadcrumbs issue #7: 0.1)",
            gt=0,
            le=1,
        ),
        Param(
            "gamma", float, 0.01, "γ, the fraction of largest-magnitude outliers dropped (official: 0.01)", ge=0, lt=1
        ),
        Param(
            "scale",
            float,
            1.0,
            "λ (α in the paper), the scale of the summed task vectors (rezazzr/breadcrumbs issue #7: 1)",
            gt=0,
        ),
        Param("scope", str, "tensor", "where the ranking is taken: per tensor or per row", choices=("tensor", "row")),
    ],
    tensor_statistics=breadcrumbs_statistics,
    blockwise=lambda ctx, params: params["scope"] == "tensor" or row_wise(ctx, params),
)
def breadcrumbs(tasks, base, weights, ctx: TensorContext, *, density, gamma, scale, scope):
    """τ̂_t = τ_t ⊙ 1[rank_t in (⌊γn⌋, ⌊γn⌋ + ⌊βn⌋]] (ranks by |τ_t| descending); θ = θ_0 + λ Σ_t w_t τ̂_t."""
    for t in range(tasks.shape[0]):
        for block in row_blocks(tasks[t]):
            if scope == "tensor":
                band_(block, *ctx.tensor_stats[t])
                continue
            magnitude = block.abs()
            top, bottom = band_counts(block.shape[1], density, gamma)
            high, low = row_kth(magnitude, top), row_kth(magnitude, bottom)
            del magnitude
            band_(block, high, low)
    return weighted_sum(tasks, weights).mul_(scale)


# --- DELLA -------------------------------------------------------------------------------


def magprune_(task: torch.Tensor, drop: float, window: float, ctx: TensorContext, stream: int) -> None:
    """DELLA's MagPrune, in place: per row, entries ranked by |x| (ascending, r = 0..n−1) are kept
    with probability p = (1 − drop) − ε/2 + ε r/(n − 1) (p = 1 − drop for n = 1) and rescaled by 1/p.
    Draws come from `uniform_draws` at the rows' places in the whole tensor (ctx.row_offset), so the
    result does not depend on how the tensor is split."""
    first_row = ctx.row_offset
    for block in row_blocks(task):
        n = block.shape[1]
        ranks = block.abs().argsort(dim=1).argsort(dim=1).to(block.dtype)
        position = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
        keep = (1.0 - drop) - window / 2 + window * position
        draws = uniform_draws(ctx, stream, first_row * n, block.numel()).reshape(block.shape).to(block.device)
        block.mul_(torch.where(draws < keep, 1.0 / keep, 0.0))
        first_row += block.shape[0]


def keep_probabilities_in_range(params: dict) -> None:
    """DELLA's keep probabilities 1 − p ± ε/2 must lie in (0, 1]."""
    low, high = 1 - params["drop"] - params["window"] / 2, 1 - params["drop"] + params["window"] / 2
    if not 0 < low or high > 1:
        raise ValueError(
            f"the keep probabilities 1 − drop ± window/2 = {low:g} … {high:g} must lie in (0, 1]; "
            "lower `window` or move `drop` away from 0 and 1"
        )


@merge_method(
    name="della",
    title="DELLA-Merging (MagPrune, elect, fuse)",
    family="task vectors",
    space="deltas",
    source="Deep, Bhardwaj, Poria, DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based "
    "Sampling, arXiv 2406.11617; code declare-lab/della",
    variant=(
        "As the official rank_magnitude_sampling + della: within each row (1-D tensors: the whole tensor) entries "
        "get keep probabilities rising linearly with their magnitude rank over [1 − p − ε/2, 1 − p + ε/2], "
        "survivors are rescaled by 1/their keep probability, then TIES's sign election on the weighted vectors and "
        "the disjoint weighted mean, then λ. Random draws from a generator seeded by (seed, tensor, expert). "
        "Defaults from the official README example (drop 0.3, window 0.14); λ defaults to 1 (README: 1.1). "
        "1-D tensors are one row."
    ),
    params=[
        Param("drop", float, 0.3, "p, the mean drop probability", gt=0, lt=1),
        Param("window", float, 0.14, "ε, the width of the window of keep probabilities", ge=0, lt=1),
        Param("scale", float, 1.0, "λ, the scale of the merged task vector", gt=0),
    ],
    randomised=True,
    blockwise=row_wise,
    check=keep_probabilities_in_range,
)
def della(tasks, base, weights, ctx: TensorContext, *, drop, window, scale):
    """τ̂_t = m_t ⊙ τ_t / p_t, m_t ~ Bernoulli(p_t), p_t from the magnitude rank; γ = sign(Σ w_t τ̂_t);
    τ_m = Σ_agree w_t τ̂_t / Σ_agree w_t; θ = θ_0 + λ τ_m."""
    for t in range(tasks.shape[0]):
        magprune_(tasks[t], drop, window, ctx, stream=t)
    return sign_elected_mean(tasks, weights).mul_(scale)
