"""Shared tensor primitives of the merge methods: magnitude masks, sign election, disjoint
means, random drop masks, and an exact streaming k-th-largest threshold for whole-model top-k.

Every function is pure and works on the stacked task tensor `tasks` of shape [T, *shape]
(one row per expert), in float32.
"""

from __future__ import annotations

import math

import torch

from speechmerge.merging.context import TensorContext


def kept_count(numel: int, density: float) -> int:
    """How many entries a density keeps: ⌊density · n⌋, so density 1 keeps all."""
    return min(numel, int(math.floor(density * numel + 1e-9)))


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of each row of a 2-D tensor (k ≥ 1), shape [rows, 1]."""
    n = values.shape[-1]
    return values.kthvalue(n - k + 1, dim=-1, keepdim=True).values


def magnitude_mask(tasks: torch.Tensor, density: float) -> torch.Tensor:
    """Per row (task), keep the ⌊density·n⌋ entries of largest |x|: mask |x| ≥ k-th largest.

    Entries tied with the threshold are kept too (as the official TIES code does); ties
    between non-zero float32 task-vector entries are rare, and tied zeros change nothing.
    """
    flat = tasks.reshape(tasks.shape[0], -1).abs()
    k = kept_count(flat.shape[1], density)
    if k == 0:
        return torch.zeros_like(tasks, dtype=torch.bool)
    if k == flat.shape[1]:
        return torch.ones_like(tasks, dtype=torch.bool)
    return (flat >= kth_largest(flat, k)).reshape(tasks.shape)


def threshold_mask(tasks: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Keep entries with |x| ≥ the row's threshold (thresholds: one value per task)."""
    view = thresholds.to(tasks.device).reshape(-1, *([1] * (tasks.dim() - 1)))
    return tasks.abs() >= view


def elect_sign(tasks: torch.Tensor) -> torch.Tensor:
    """TIES sign election by mass: the sign of Σ_t x_t per entry (+1 where the sum is 0)."""
    total = tasks.sum(dim=0)
    return torch.where(total >= 0, 1.0, -1.0).to(tasks.dtype)


def disjoint_mean(tasks: torch.Tensor, sign: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES disjoint merge: per entry, the weighted mean over the tasks whose non-zero value
    agrees with the elected sign, Σ_agree w_t x_t / Σ_agree w_t (0 where none agrees)."""
    w = weights.to(tasks.device, tasks.dtype).reshape(-1, *([1] * (tasks.dim() - 1)))
    agree = (torch.sign(tasks) == sign.unsqueeze(0)).to(tasks.dtype) * w
    total = (tasks * agree).sum(dim=0)
    count = agree.sum(dim=0)
    return torch.where(count != 0, total / torch.where(count != 0, count, 1.0), 0.0)


def weighted_sum(tasks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t w_t x_t over the task axis."""
    return torch.tensordot(weights.to(tasks.device, tasks.dtype), tasks, dims=1)


def drop_mask(shape: tuple[int, ...], keep: float, ctx: TensorContext, stream: int) -> torch.Tensor:
    """Bernoulli(keep) mask drawn from the tensor's seeded CPU generator, moved to the device."""
    generator = ctx.generator(stream)
    return (torch.rand(shape, generator=generator) < keep).to(ctx.device)


class GlobalMagnitudeThreshold:
    """Per task, the exact k-th largest |τ| over the whole model, k = ⌊density · N⌋, where N
    counts every entry the method merges — found in two streaming rounds, never holding
    more than one tensor.

    For non-negative float32 values the int32 bit pattern orders like the value. Round 0
    histograms the top 16 bits of |τ| per task and finds the bin holding the k-th largest;
    round 1 histograms the low 16 bits of the entries inside that bin. The two bins give the
    threshold's bit pattern exactly. This is the whole-model top-k of the official TIES code
    (which flattens every task vector) without flattening anything.
    """

    rounds = 2

    def __init__(self, num_tasks: int, density_param: str = "density"):
        self.num_tasks = num_tasks
        self.density_param = density_param
        self.density: float | None = None
        self.total = 0
        self.high = torch.zeros(num_tasks, 1 << 15, dtype=torch.int64)
        self.low = torch.zeros(num_tasks, 1 << 16, dtype=torch.int64)
        self.high_bin = torch.zeros(num_tasks, dtype=torch.int64)
        self.remaining = torch.zeros(num_tasks, dtype=torch.int64)
        self.thresholds = torch.zeros(num_tasks, dtype=torch.float32)

    def observe(self, round_index: int, tasks: torch.Tensor, ctx: TensorContext, params: dict) -> None:
        bits = tasks.reshape(tasks.shape[0], -1).abs().contiguous().view(torch.int32)
        for t in range(tasks.shape[0]):
            row = bits[t]
            if round_index == 0:
                self.high[t] += torch.bincount(row >> 16, minlength=1 << 15).cpu()
            else:
                inside = row[(row >> 16) == int(self.high_bin[t])]
                self.low[t] += torch.bincount(inside & 0xFFFF, minlength=1 << 16).cpu()
        if round_index == 0:
            density = params[self.density_param]
            if self.density is not None and density != self.density:
                raise ValueError("a whole-model top-k needs one density for every tensor")
            self.density = density
            self.total += bits.shape[1]

    def end_round(self, round_index: int) -> None:
        k = kept_count(self.total, self.density or 0.0)
        for t in range(self.num_tasks):
            if k == 0:
                self.thresholds[t] = math.inf
                continue
            hist = self.high[t] if round_index == 0 else self.low[t]
            target = k if round_index == 0 else int(self.remaining[t])
            above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # count ≥ bin
            bin_index = int((above >= target).nonzero().max())
            if round_index == 0:
                self.high_bin[t] = bin_index
                self.remaining[t] = target - (int(above[bin_index + 1]) if bin_index + 1 < len(hist) else 0)
            else:
                pattern = torch.tensor([(int(self.high_bin[t]) << 16) | bin_index], dtype=torch.int32)
                self.thresholds[t] = pattern.view(torch.float32)[0]

    def result(self) -> torch.Tensor:
        return self.thresholds


def low_rank_part(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-r approximation U_r diag(σ_r) V_r^T of a matrix (Eckart–Young), by exact SVD."""
    if rank >= min(matrix.shape):
        return matrix.clone()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]
