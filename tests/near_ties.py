"""Comparing a selection (top-k, threshold, sign election) with a reference without depending on
the last bit of a kernel.

An entry whose selection score lies within rounding of the decision boundary may go either way:
two magnitudes within float32 rounding of the k-th largest may swap, a sign sum within rounding of
zero may flip. Both answers are valid. Such entries are exempt from the comparison, but counted,
and their number is bounded, so the test still checks the method exactly everywhere else.
"""

from __future__ import annotations

import torch

RELATIVE = 1e-5  # float32 rounding (6e-8) of a score computed along another path, with ample room


def topk_boundary(scores: torch.Tensor, k: int, dim: int | None = None) -> torch.Tensor:
    """The midpoint between the k-th and (k+1)-th largest scores (flat, or along `dim` with the
    dimension kept): an entry far from it is on the same side of the cut whatever the rounding."""
    flat = scores.reshape(-1) if dim is None else scores
    axis = 0 if dim is None else dim
    n = flat.shape[axis]
    if k <= 0:
        return flat.amax(axis, keepdim=dim is not None) + 1.0
    if k >= n:
        return flat.amin(axis, keepdim=dim is not None) - 1.0
    ordered = flat.sort(dim=axis, descending=True).values
    kth, next_one = ordered.narrow(axis, k - 1, 1), ordered.narrow(axis, k, 1)
    middle = (kth + next_one) / 2
    return middle.reshape(()) if dim is None else middle


def near(scores: torch.Tensor, boundary, tolerance) -> torch.Tensor:
    """Entries whose score lies within `tolerance` of the boundary (both broadcast)."""
    return (scores - boundary).abs() <= tolerance


def near_cut(scores: torch.Tensor, k: int, dim: int | None = None, tolerance=None) -> torch.Tensor:
    """Entries whose score lies within rounding (default RELATIVE × the cut) of the top-k cut."""
    boundary = topk_boundary(scores, k, dim)
    return near(scores, boundary, RELATIVE * boundary.abs() if tolerance is None else tolerance)


def near_zero_sum(terms: torch.Tensor) -> torch.Tensor:
    """Entries whose sum over the first axis lies within rounding of 0, so that its sign may flip
    (entries whose terms are all zero are not: every sign gives the same result there)."""
    magnitude = terms.abs().sum(0)
    return (terms.sum(0).abs() <= RELATIVE * magnitude) & (magnitude > 0)


def assert_close_except_near_ties(
    actual: torch.Tensor,
    expected: torch.Tensor,
    exempt: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    max_exempt: int | None = None,
    msg: str = "",
) -> int:
    """`actual` ≈ `expected` at every entry outside `exempt` (a mask broadcast to their shape);
    at most `max_exempt` (default: max(6, 0.5 % of the entries)) entries may be exempt, so the
    exemption cannot hide a wrong method. Returns how many entries were exempt."""
    actual, expected = actual.double(), expected.double()
    exempt = torch.broadcast_to(exempt, expected.shape)
    count = int(exempt.sum())
    bound = max(6, expected.numel() // 200) if max_exempt is None else max_exempt
    assert count <= bound, f"{msg}: {count} of {expected.numel()} entries lie near a selection boundary (≤ {bound})"
    keep = ~exempt
    torch.testing.assert_close(
        actual[keep], expected[keep], atol=atol, rtol=rtol, msg=lambda text: f"{msg} ({count} exempt): {text}"
    )
    return count
