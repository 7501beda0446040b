"""The exact streaming k-th-largest selection behind TIES and magnitude pruning."""

from __future__ import annotations

import math

import pytest
import torch

from speechmerge.merging import masks


def sorted_kth(x: torch.Tensor, k: int) -> float:
    if k <= 0:
        return math.inf
    if k >= x.numel():
        return 0.0
    return float(x.abs().flatten().sort(descending=True).values[k - 1])


@pytest.mark.parametrize("k", [0, 1, 2, 17, 500, 999, 1000, 5000])
def test_kth_largest_magnitude_equals_sorting(k):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(k)) * 1e-3
    assert masks.kth_largest_magnitude(x, k) == sorted_kth(x, k)


def test_selection_handles_ties_zeros_and_tiny_values():
    x = torch.tensor([0.0, 0.0, 3.0, -3.0, 1e-30, -2.0, 3.0, 0.5, 0.0, 1e-38])
    for k in range(0, 12):
        assert masks.kth_largest_magnitude(x, k) == sorted_kth(x, k), k


def test_stream_over_chunks_equals_one_flat_sort(monkeypatch):
    monkeypatch.setattr(masks, "CHUNK", 37)  # force many chunk boundaries
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(shape, generator=g) * scale for shape, scale in [((40, 30), 1e-2), ((7,), 5.0), ((3, 5, 11), 1e-4)]
    ]
    flat = torch.cat([t.flatten() for t in tensors])
    for k in [1, 10, 600, flat.numel() - 1]:
        selector = masks.MagnitudeSelector()
        for t in tensors:
            selector.count(t)
        selector.narrow(k)
        for t in tensors:
            selector.refine(t)
        assert selector.threshold() == sorted_kth(flat, k)


def test_trim_to_density_keeps_exactly_the_largest():
    g = torch.Generator().manual_seed(1)
    tasks = torch.randn(3, 20, 10, generator=g)
    original = tasks.clone()
    masks.trim_to_density_(tasks, 0.25)
    for t in range(3):
        keep = original[t].abs().flatten().topk(50).indices
        expected = torch.zeros(200)
        expected[keep] = original[t].flatten()[keep]
        assert torch.equal(tasks[t].flatten(), expected)


def test_disjoint_mean_against_a_loop_over_entries():
    g = torch.Generator().manual_seed(2)
    tasks = torch.randn(4, 6, generator=g)
    tasks[1, 2] = 0.0
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0])
    sign = masks.elect_sign(tasks, weights)
    merged = masks.disjoint_mean(tasks, sign, weights)
    for j in range(6):
        total = sum(float(weights[t] * tasks[t, j]) for t in range(4))
        if abs(total) <= 1e-5 * sum(abs(float(weights[t] * tasks[t, j])) for t in range(4)):
            continue  # a sign sum within rounding of zero may be elected either way
        s = 1.0 if total >= 0 else -1.0
        assert float(sign[j]) == s
        agreeing = [t for t in range(4) if tasks[t, j] != 0 and math.copysign(1, tasks[t, j]) == s]
        expected = sum(float(weights[t] * tasks[t, j]) for t in agreeing) / sum(float(weights[t]) for t in agreeing)
        assert float(merged[j]) == pytest.approx(expected, rel=1e-6)


def test_float64_selection_keeps_the_top_k_and_only_float32_ties():
    """Float64 magnitudes are rounded towards zero for the float32 histogram: the kept set is the
    top k plus only entries equal to the k-th at float32 resolution, never fewer than k."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, generator=g, dtype=torch.float64)
    x[:3] = 1.0 + torch.tensor([1e-12, 2e-12, 3e-12], dtype=torch.float64)  # three float32 ties
    for k in [1, 2, 3, 4, 100, 1999]:
        kept = x.abs() >= masks.kth_largest_magnitude(x, k)
        exact = x.abs() >= x.abs().sort(descending=True).values[k - 1]
        assert bool((kept | ~exact).all()), k  # every exact top-k entry is kept
        extra = x.abs()[kept & ~exact].float()
        assert bool((extra == x.abs().sort(descending=True).values[k - 1].float()).all()), k


def test_near_tie_exemption_tolerates_only_swaps_at_the_cut():
    """The tests' tie rule (near_ties.py): a swap of two magnitudes within rounding of the top-k cut
    passes, a swap across a clear gap fails, and too many exempt entries fail."""
    from near_ties import assert_close_except_near_ties, near_cut

    x = torch.tensor([5.0, 4.0, 3.0 + 1e-6, 3.0, 2.0, 1.0])
    reference = torch.where(x >= 3.0 + 1e-6, x, 0.0)  # top 3
    swapped = torch.tensor([5.0, 4.0, 0.0, 3.0, 0.0, 0.0])  # the near-tied 3rd and 4th swapped
    assert assert_close_except_near_ties(swapped, reference, near_cut(x, 3), atol=0, rtol=0) == 2
    wrong = torch.tensor([5.0, 0.0, 3.0 + 1e-6, 3.0, 0.0, 0.0])  # the 2nd dropped: not a tie
    with pytest.raises(AssertionError):
        assert_close_except_near_ties(wrong, reference, near_cut(x, 3), atol=0, rtol=0)
    with pytest.raises(AssertionError, match="near a selection boundary"):
        assert_close_except_near_ties(swapped, reference, torch.ones(6, dtype=torch.bool), atol=0, rtol=0, max_exempt=2)
