"""Masks and draws shared by the merge methods: magnitude selection (an exact streaming
k-th-largest threshold, per tensor or over the whole model), sign election, disjoint means,
weighted sums, chunked entry-wise maps and seeded random drop masks.

Functions work on the stacked task tensor `tasks` of shape [T, *shape] (one row per expert),
in float32. Those ending in `_` work in place; all of them keep their temporaries to the size
of one tensor (or one chunk of it), so that a merge needs about (experts + 2) × the largest
tensor whatever the method.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from speechmerge.merging.context import TensorContext

CHUNK = 1 << 20  # values per chunk when scanning a tensor: bounds every temporary to 4 MiB


def kept_count(numel: int, density: float) -> int:
    """How many entries a density keeps: ⌊density · n⌋, so density 1 keeps all."""
    return min(numel, int(math.floor(density * numel + 1e-9)))


def _chunks(x: torch.Tensor):
    return x.reshape(-1).split(CHUNK)


def _magnitude_bits(chunk: torch.Tensor) -> torch.Tensor:
    """|x| as int32 bit patterns of float32, which order like the values for non-negative float32.

    Wider magnitudes (float64) are rounded towards zero, so a threshold t found on them satisfies
    |x| ≥ t exactly when the rounded |x| ≥ t: the selection keeps the top k and any entries tied
    with the k-th at float32 resolution (as it keeps exact ties)."""
    magnitude = chunk.abs()
    narrow = magnitude.to(torch.float32)
    if magnitude.dtype != torch.float32:
        narrow = torch.where(
            narrow.to(magnitude.dtype) > magnitude, torch.nextafter(narrow, torch.zeros_like(narrow)), narrow
        )
    return narrow.view(torch.int32)


def _accumulate(histogram: torch.Tensor, bins: torch.Tensor) -> None:
    """histogram[b] += how often b occurs in `bins` (sparse counting for few values, which is
    much cheaper than a dense bincount when a tensor is small)."""
    if bins.numel() == 0:
        return
    if bins.numel() < histogram.numel() // 8:
        values, counts = torch.unique(bins, return_counts=True)
        histogram.index_add_(0, values.cpu().long(), counts.cpu())
    else:
        histogram += torch.bincount(bins, minlength=histogram.numel()).cpu()


def _last_reaching(histogram: torch.Tensor, target: int) -> tuple[int, int]:
    """The highest bin b whose count of entries ≥ b reaches `target`, and the count above b."""
    at_or_above = torch.flip(torch.cumsum(torch.flip(histogram, [0]), 0), [0])
    b = int((at_or_above >= target).nonzero().max())
    above = int(at_or_above[b + 1]) if b + 1 < histogram.numel() else 0
    return b, above


class MagnitudeSelector:
    """The exact k-th largest |x| over a stream of tensors, in two passes, holding nothing.

    Pass 1 (`count`) histograms the top 16 bits of each |x| (as int32 bit patterns, which order
    like the values); `narrow(k)` finds the bin that holds the k-th largest; pass 2 (`refine`)
    histograms the low 16 bits of the entries inside that bin; `threshold()` rebuilds the k-th
    largest value bit for bit. Tensors are scanned in chunks, so temporaries stay small.
    A tensor's own top-k is the one-tensor case; TIES's whole-model top-k is the stream case.
    """

    def __init__(self) -> None:
        self.high: torch.Tensor | None = None  # allocated on first use: selectors are made per tensor
        self.low: torch.Tensor | None = None
        self.total = 0
        self.high_bin: int | None = None
        self.remaining = 0
        self._threshold: float | None = None

    def count(self, x: torch.Tensor) -> None:
        if self.high is None:
            self.high = torch.zeros(1 << 15, dtype=torch.int64)
        for chunk in _chunks(x):
            _accumulate(self.high, _magnitude_bits(chunk) >> 16)
        self.total += x.numel()

    def narrow(self, k: int) -> None:
        if k <= 0:
            self._threshold = math.inf
        elif k >= self.total:
            self._threshold = 0.0
        else:
            self.high_bin, above = _last_reaching(self.high, k)
            self.remaining = k - above

    @property
    def needs_refine(self) -> bool:
        return self._threshold is None

    def refine(self, x: torch.Tensor) -> None:
        if not self.needs_refine:
            return
        if self.low is None:
            self.low = torch.zeros(1 << 16, dtype=torch.int64)
        for chunk in _chunks(x):
            bits = _magnitude_bits(chunk)
            _accumulate(self.low, bits[(bits >> 16) == self.high_bin] & 0xFFFF)

    def threshold(self) -> float:
        if self._threshold is None:
            low_bin, _ = _last_reaching(self.low, self.remaining)
            pattern = torch.tensor([(self.high_bin << 16) | low_bin], dtype=torch.int32)
            self._threshold = float(pattern.view(torch.float32)[0])
        return self._threshold


def kth_largest_magnitude(x: torch.Tensor, k: int) -> float:
    """The k-th largest |x| of one tensor (inf for k = 0, 0 for k ≥ numel)."""
    selector = MagnitudeSelector()
    selector.count(x)
    selector.narrow(k)
    selector.refine(x)
    return selector.threshold()


def zero_below_(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """In place: zero the entries with |x| < threshold (chunked; x must be contiguous)."""
    for chunk in _chunks(x):
        chunk.masked_fill_(chunk.abs() < threshold, 0.0)
    return x


def trim_to_density_(tasks: torch.Tensor, density: float) -> torch.Tensor:
    """In place, per row (task): keep the ⌊density·n⌋ entries of largest |x|, zero the rest.

    Entries tied with the threshold are kept too (as the official TIES code does: |x| ≥ the
    k-th largest); ties between non-zero float32 task-vector entries are rare, tied zeros change
    nothing.
    """
    for t in range(tasks.shape[0]):
        row = tasks[t]
        zero_below_(row, kth_largest_magnitude(row, kept_count(row.numel(), density)))
    return tasks


def trim_below_(tasks: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """In place: zero each row's entries below that row's threshold."""
    for t in range(tasks.shape[0]):
        zero_below_(tasks[t], thresholds[t])
    return tasks


def weighted_sum(tasks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t w_t x_t over the task axis."""
    return torch.tensordot(weights.to(tasks.device, tasks.dtype), tasks, dims=1)


def elect_sign(tasks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES sign election by mass: the sign of Σ_t w_t x_t per entry (+1 where the sum is 0)."""
    total = weighted_sum(tasks, weights)
    return torch.where(total >= 0, 1.0, -1.0).to(tasks.dtype)


def disjoint_mean(tasks: torch.Tensor, sign: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES disjoint merge: per entry, the weighted mean over the tasks whose non-zero value
    agrees with the elected sign, Σ_agree w_t x_t / Σ_agree w_t (0 where none agrees).

    With γ = ±1 the sign, x_t agrees exactly when γ x_t > 0, so Σ_agree w_t x_t = γ Σ_t w_t
    max(γ x_t, 0): one product, one clamp and two weighted sums over the task axis."""
    agreeing = (tasks * sign.unsqueeze(0)).clamp_min_(0.0)  # |x_t| where x_t agrees, else 0
    count = weighted_sum((agreeing > 0).to(tasks.dtype), weights)
    total = weighted_sum(agreeing, weights).mul_(sign)
    return torch.where(count != 0, total / torch.where(count != 0, count, 1.0), 0.0)


def map_entries(tasks: torch.Tensor, merge_entries) -> torch.Tensor:
    """Apply an entry-wise merge, `merge_entries(sub: [T, c]) -> [c]`, over chunks of the
    flattened entries, so its temporaries hold T·c ≈ CHUNK values instead of T copies of the
    tensor. For merges where each output entry depends only on the same entry of the tasks."""
    flat = tasks.reshape(tasks.shape[0], -1)
    out = torch.empty(flat.shape[1], dtype=tasks.dtype, device=tasks.device)
    step = max(1, CHUNK // tasks.shape[0])
    for start in range(0, flat.shape[1], step):
        out[start : start + step] = merge_entries(flat[:, start : start + step])
    return out.reshape(tasks.shape[1:])


def _chunk_generator(ctx: TensorContext, stream: int, chunk: int) -> np.random.SFC64:
    """The bit generator of one CHUNK of one tensor's draws, seeded (through numpy's
    SeedSequence hash) by (seed, tensor name, stream, chunk)."""
    key = ctx.generator(stream).initial_seed()
    return np.random.SFC64(np.random.SeedSequence([key & 0xFFFFFFFF, key >> 32, chunk]))


def _generated(ctx: TensorContext, stream: int, start: int, count: int, unit: np.dtype) -> np.ndarray:
    """Entries [start, start + count) of the chunk generators' output read as `unit`s: entry i is
    unit i % CHUNK of generator i // CHUNK's little-endian 64-bit outputs (8 / unit.itemsize
    entries each), so a prefix of a longer draw is the shorter draw."""
    per_output = 8 // unit.itemsize
    pieces = []
    first, last = start // CHUNK, (start + count - 1) // CHUNK
    for chunk in range(first, last + 1):
        low = max(start - chunk * CHUNK, 0)
        high = min(start + count - chunk * CHUNK, CHUNK)
        raw = _chunk_generator(ctx, stream, chunk).random_raw((high + per_output - 1) // per_output)
        pieces.append(raw.astype("<u8", copy=False).view(unit)[low:high])
    return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def uniform_words(ctx: TensorContext, stream: int, start: int, count: int) -> np.ndarray:
    """Uniform 32-bit words (uint32) for flat entries [start, start + count) of the tensor `ctx`
    names.

    Entry i's word is word i % CHUNK of the chunk generator i // CHUNK (SFC64, Doty-Humphrey's
    small fast chaotic generator; word 2j is the low half of its 64-bit output j, word 2j + 1 the
    high half, whatever the machine's byte order). Draws are sequential, so a prefix of a longer
    draw is the shorter draw: an entry's word is the same whatever the device and however the
    tensor is split into row blocks. About 8× cheaper than `torch.rand` per entry."""
    return _generated(ctx, stream, start, count, np.dtype("<u4"))


def uniform_draws(ctx: TensorContext, stream: int, start: int, count: int) -> torch.Tensor:
    """U[0, 1) float32 draws for flat entries [start, start + count): the top 24 bits of each
    of `uniform_words`, times 2⁻²⁴ (every float32 multiple of 2⁻²⁴ in [0, 1) equally likely)."""
    words = uniform_words(ctx, stream, start, count)
    return torch.from_numpy((words >> 8).astype(np.float32)).mul_(2.0**-24)


def keep_threshold(keep: float) -> int:
    """The 32-bit word below which an entry is kept: P(word < ⌊keep · 2³²⌋) = keep to 2⁻³²."""
    return min(1 << 32, int(math.floor(keep * (1 << 32))))


def top_bytes(ctx: TensorContext, stream: int, start: int, count: int) -> np.ndarray:
    """Uniform bytes (uint8) for flat entries [start, start + count): entry i's is byte i % CHUNK
    (little-endian order of its 64-bit outputs) of the chunk generator i // CHUNK, one
    `random_raw` output per 8 entries; a prefix of a longer draw is the shorter draw, as for
    `uniform_words`."""
    return _generated(ctx, stream, start, count, np.dtype(np.uint8))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def counter_bits(ctx: TensorContext, stream: int, entries: np.ndarray) -> np.ndarray:
    """24 uniform bits (uint64 < 2²⁴) for each flat entry index in `entries`: the splitmix64
    finaliser (Steele, Lea, Flood 2014) of key + (i + 1) · γ, a counter-based draw, so any subset
    of entries costs only its own size."""
    key = np.uint64((ctx.generator(stream).initial_seed() ^ 0x5BD1E995) & 0xFFFFFFFFFFFFFFFF)
    z = key + (entries.astype(np.uint64) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) >> np.uint64(40)


def kept_entries(ctx: TensorContext, stream: int, start: int, count: int, keep: float) -> np.ndarray:
    """Which of flat entries [start, start + count) a keep rate keeps (bool): entry i is kept when
    its 32-bit word w_i = b_i · 2²⁴ + c_i is below `keep_threshold(keep)`, with b_i its byte from
    `top_bytes` and c_i its 24 bits from `counter_bits`. w_i is uniform over 2³², so P(keep) is
    ⌊keep · 2³²⌋ / 2³² exactly; c_i is only needed where b_i equals the threshold's top byte (one
    entry in 256), so the draw costs about one generated byte per entry."""
    threshold = keep_threshold(keep)
    if threshold >= 1 << 32:
        return np.ones(count, dtype=bool)
    high, low = threshold >> 24, threshold & 0xFFFFFF
    top = top_bytes(ctx, stream, start, count)
    kept = top < high
    tied = np.flatnonzero(top == high)
    if tied.size:
        kept[tied] = counter_bits(ctx, stream, tied + start) < low
    return kept


def random_drop_(x: torch.Tensor, keep: float, ctx: TensorContext, stream: int) -> torch.Tensor:
    """In place: keep each entry with probability `keep`, zero the others (`kept_entries`, at the
    entry's place in the whole tensor; chunk by chunk, so temporaries stay small). The entries are
    multiplied by their 0/1 mask (a third of `masked_fill_`'s time on the 2-core VM), so a dropped
    negative entry becomes −0 and a non-finite one stays non-finite, which the engine's check of
    every merged tensor then reports."""
    offset = ctx.row_offset * (x[0].numel() if x.dim() > 0 and x.shape[0] else 0)
    for index, chunk in enumerate(_chunks(x)):
        kept = kept_entries(ctx, stream, offset + index * CHUNK, chunk.numel(), keep)
        if chunk.device.type == "cpu" and chunk.dtype == torch.float32:
            np.multiply(chunk.numpy(), kept, out=chunk.numpy())
        else:
            chunk.mul_(torch.from_numpy(kept).to(chunk.device))
    return x


class MagnitudeThresholds:
    """Statistics pass: per task, the exact k-th largest |τ| over everything observed,
    k = ⌊density · N⌋. Over every tensor a method merges it is the whole-model top-k of the
    official TIES code (which flattens every task vector), found without flattening anything;
    over one tensor (or its row blocks) it is a per-tensor top-k. Round 0 counts, round 1
    refines (see MagnitudeSelector)."""

    rounds = 2

    def __init__(self, num_tasks: int, density_param: str = "density"):
        self.selectors = [MagnitudeSelector() for _ in range(num_tasks)]
        self.density_param = density_param
        self.density: float | None = None

    def observe(self, round_index: int, tasks: torch.Tensor, ctx: TensorContext, params: dict) -> None:
        if round_index == 0:
            density = params[self.density_param]
            if self.density is not None and density != self.density:
                raise ValueError("a whole-model top-k needs one density for every tensor")
            self.density = density
        for selector, row in zip(self.selectors, tasks):
            selector.count(row) if round_index == 0 else selector.refine(row)

    def end_round(self, round_index: int) -> None:
        if round_index == 0:
            for selector in self.selectors:
                selector.narrow(kept_count(selector.total, self.density or 0.0))

    def result(self) -> list[float]:
        return [selector.threshold() for selector in self.selectors]
