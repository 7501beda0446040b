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
    mask = masks.uniform_words(ctx, 0, 0, n) < masks.keep_threshold(keep)
    others = {
        "next entry": np.roll(mask, 1),
        "other stream": masks.uniform_words(ctx, 1, 0, n) < masks.keep_threshold(keep),
        "other tensor": masks.uniform_words(tensor_context("model.decoder.layers.0.fc1.weight"), 0, 0, n)
        < masks.keep_threshold(keep),
        "other seed": masks.uniform_words(tensor_context(seed=1), 0, 0, n) < masks.keep_threshold(keep),
    }
    for what, other in others.items():
        assert chi_square_2x2(mask, other) < 15.1, what


def test_uniform_draws_have_uniform_deciles():
    """χ² goodness of fit of 2²⁰ draws over 10 equal bins (9 degrees of freedom, 1e-4 level: < 33.7)."""
    draws = masks.uniform_draws(tensor_context(), 0, 0, 1 << 20)
    counts = torch.bincount((draws * 10).long(), minlength=10).double()
    expected = draws.numel() / 10
    assert float(((counts - expected) ** 2 / expected).sum()) < 33.7
