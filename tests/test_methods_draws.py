"""The seeded random draws behind DARE and DELLA: the same per entry however a tensor is split,
Bernoulli with the asked keep rate, and independent across entries, streams and tensors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from speechmerge.merging import masks
from tests.method_calls import tensor_context


def drop_in_row_blocks(x: torch.Tensor, keep: float, rows_per_block: int, stream: int = 0) -> torch.Tensor:
    """random_drop_ applied block by block, each block told its first row, as the engine does."""
    ctx = tensor_context()
    out = x.clone()
    for start in range(0, x.shape[0], rows_per_block):
        block = out[start : start + rows_per_block]
        masks.random_drop_(block, keep, replace(ctx, row_offset=start), stream)
    return out


@pytest.mark.parametrize("rows_per_block", [1, 7, 64])
def test_drop_mask_is_the_same_whole_and_in_row_blocks(monkeypatch, rows_per_block):
    monkeypatch.setattr(masks, "CHUNK", 100)  # blocks straddle many chunk boundaries
    x = torch.randn(64, 45, generator=torch.Generator().manual_seed(0))
    whole = masks.random_drop_(x.clone(), 0.3, tensor_context(), 0)
    assert torch.equal(drop_in_row_blocks(x, 0.3, rows_per_block), whole)
    assert 0 < int((whole != 0).sum()) < x.numel()


def test_uniform_draws_are_the_same_for_any_window(monkeypatch):
    monkeypatch.setattr(masks, "CHUNK", 64)
    ctx = tensor_context()
    whole = masks.uniform_draws(ctx, 2, 0, 1000)
    for start, count in [(0, 1), (1, 63), (63, 2), (100, 517), (999, 1)]:
        assert torch.equal(masks.uniform_draws(ctx, 2, start, count), whole[start : start + count])
    assert float(whole.min()) >= 0.0 and float(whole.max()) < 1.0


def test_keep_rate_is_bernoulli(monkeypatch):
    """Over n = 2²⁰ entries the kept fraction lies within 5 standard errors of `keep`."""
    n = 1 << 20
    for keep in (0.1, 0.5, 0.9):
        kept = int((masks.random_drop_(torch.ones(n), keep, tensor_context(), 0) != 0).sum())
        assert abs(kept / n - keep) < 5 * math.sqrt(keep * (1 - keep) / n), keep
    assert int((masks.random_drop_(torch.ones(1000), 1.0, tensor_context(), 0) != 0).sum()) == 1000


def chi_square_2x2(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's χ² statistic (1 degree of freedom) of the 2×2 table of two boolean arrays."""
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]], dtype=float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_masks_are_independent_across_entries_streams_tensors_and_seeds():
    """Neighbouring entries, two experts (streams) of one tensor, two tensors and two seeds:
    each pair of masks passes a χ² test of independence at the 1e-4 level (χ²₁ < 15.1)."""
    n, keep = 1 << 18, 0.3
    ctx = tensor_context()
    for draw in (masks.kept_entries, uniform_words_below):  # DARE's masks, and DELLA's words
        mask = draw(ctx, 0, 0, n, keep)
        others = {
            "next entry": np.roll(mask, 1),
            "other stream": draw(ctx, 1, 0, n, keep),
            "other tensor": draw(tensor_context("model.decoder.layers.0.fc1.weight"), 0, 0, n, keep),
            "other seed": draw(tensor_context(seed=1), 0, 0, n, keep),
        }
        for what, other in others.items():
            assert chi_square_2x2(mask, other) < 15.1, (draw.__name__, what)


def uniform_words_below(ctx, stream: int, start: int, count: int, keep: float) -> np.ndarray:
    return masks.uniform_words(ctx, stream, start, count) < masks.keep_threshold(keep)


def splitmix64_top24(key: int, index: int) -> int:
    """The splitmix64 finaliser of key + (index + 1) · γ (Steele, Lea, Flood 2014) in Python
    integers, top 24 bits."""
    mask = (1 << 64) - 1
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 40


def test_counter_bits_are_splitmix64_of_the_entry_index():
    ctx = tensor_context()
    key = (ctx.generator(3).initial_seed() ^ 0x5BD1E995) & ((1 << 64) - 1)
    entries = np.array([0, 1, 2, 255, 1 << 20, (1 << 40) + 7], dtype=np.int64)
    assert masks.counter_bits(ctx, 3, entries).tolist() == [splitmix64_top24(key, int(i)) for i in entries]


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0, (77 * 2**24 + 8_000_000) / 2**32])
def test_kept_entries_compare_the_whole_32_bit_word(monkeypatch, keep):
    """Kept exactly when byte · 2²⁴ + counter bits < ⌊keep · 2³²⌋, including the entries whose
    byte ties with the threshold's (the last keep is a threshold with non-zero low bits), and
    the same for any window of the entries."""
    monkeypatch.setattr(masks, "CHUNK", 4096)
    ctx, n = tensor_context(), 1 << 16
    words = masks.top_bytes(ctx, 0, 0, n).astype(np.int64) * 2**24 + np.array(
        [splitmix64_top24((ctx.generator(0).initial_seed() ^ 0x5BD1E995) & ((1 << 64) - 1), i) for i in range(n)]
    )
    kept = masks.kept_entries(ctx, 0, 0, n, keep)
    assert np.array_equal(kept, words < masks.keep_threshold(keep))
    for start, count in [(0, 1), (5, 4091), (4095, 2), (10_000, 30_001)]:
        assert np.array_equal(masks.kept_entries(ctx, 0, start, count, keep), kept[start : start + count])
        assert np.array_equal(
            masks.top_bytes(ctx, 0, start, count), masks.top_bytes(ctx, 0, 0, n)[start : start + count]
        )


def test_uniform_draws_have_uniform_deciles():
    """χ² goodness of fit of 2²⁰ draws over 10 equal bins (9 degrees of freedom, 1e-4 level: < 33.7)."""
    draws = masks.uniform_draws(tensor_context(), 0, 0, 1 << 20)
    counts = torch.bincount((draws * 10).long(), minlength=10).double()
    expected = draws.numel() / 10
    assert float(((counts - expected) ** 2 / expected).sum()) < 33.7
