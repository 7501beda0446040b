"""LoRS-Merging and its SVP-only / MP-only ablations against a reference written here from the
paper (Zhao, Sun, Zhang, LoRS-Merging, arXiv 2502.17380) and its official scripts, on a tiny
Whisper family; and the invariants that tie them to task arithmetic.

The engine computes the low-rank part in float32 and the reference in float64: their residuals
differ by up to ~2e-5 of max |τ|, so residual magnitudes within that of the top-ρ cut may swap;
those entries are exempt (counted and bounded, see near_ties.py)."""

from __future__ import annotations

import pytest
import torch
from near_ties import assert_close_except_near_ties, near_cut
from test_merge_methods import TIED, deltas, run_merge

WEIGHTS = [1.0, 0.5, 2.0]
LOW_RANK_ROUNDING = 1e-4  # × max |τ|: 4× the largest float32-vs-float64 residual difference measured here


def low_rank(tau: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def magnitude_pruned(x: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(ρ · numel) entries of largest |x| (the scripts' topk), zero the rest."""
    keep = x.abs().flatten().topk(int(density * x.numel())).indices
    out = torch.zeros(x.numel(), dtype=x.dtype)
    out[keep] = x.flatten()[keep]
    return out.reshape(x.shape)


def near_the_cut(x: torch.Tensor, density: float, tolerance: float | None = None) -> torch.Tensor:
    """Entries of x whose magnitude lies within `tolerance` (default: rounding) of its top-ρ cut."""
    return near_cut(x.abs(), int(density * x.numel()), tolerance=tolerance)


def is_block_matrix(name: str) -> bool:
    return name.endswith(("proj.weight", "fc1.weight", "fc2.weight"))


def check(tmp_path, family, method, params, prune, lam):
    """θ_0 + λ Σ_t w_t τ̂_t with (τ̂, exempt entries) = prune(τ) on block matrices and raw τ elsewhere."""
    base_dir, expert_dirs = family
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, method, params, weights=WEIGHTS)
    base, names, taus = deltas(base_dir, expert_dirs)
    for name in names:
        pruned = [prune(t[name].double()) if is_block_matrix(name) else (t[name].double(), False) for t in taus]
        expected = base[name].double() + lam * sum(w * tau for w, (tau, _) in zip(WEIGHTS, pruned))
        exempt = torch.zeros(expected.shape, dtype=torch.bool)
        for _, mask in pruned:
            exempt |= mask
        assert_close_except_near_ties(merged[name], expected, exempt, atol=2e-6, rtol=1e-5, msg=name)


def lors_prune(rank: int, density: float):
    def prune(tau):
        low = low_rank(tau, rank)
        residual = tau - low
        return low + magnitude_pruned(residual, density), near_the_cut(
            residual, density, LOW_RANK_ROUNDING * float(tau.abs().max())
        )

    return prune


def test_lors_matches_the_official_scripts(tmp_path, family):
    check(tmp_path, family, "lors", {"rank": 3, "density": 0.3, "scale": 0.6}, lors_prune(3, 0.3), 0.6)


def test_lors_rank_fraction_is_floored_and_at_least_one(tmp_path, family):
    """r = max(1, ⌊0.01 · 16⌋) = 1 for the tiny 16-wide matrices; λ defaults to 1/T."""
    check(tmp_path, family, "lors", {}, lors_prune(1, 0.2), 1 / 3)


def test_svp_only_matches_the_official_scripts(tmp_path, family):
    check(tmp_path, family, "lors_svp", {"rank": 2}, lambda tau: (low_rank(tau, 2), False), 1 / 3)


def test_mp_only_matches_the_official_scripts(tmp_path, family):
    def prune(tau):
        return magnitude_pruned(tau, 0.25), near_the_cut(tau, 0.25)

    check(tmp_path, family, "lors_mp", {"density": 0.25, "scale": 0.5}, prune, 0.5)


@pytest.mark.parametrize(
    "method,params",
    [
        ("lors", {"rank": 16, "density": 0.2}),  # full rank: the residual is zero, MP has nothing to prune
        ("lors", {"rank": 2, "density": 1.0}),  # ρ = 1 keeps the whole residual
        ("lors_svp", {"rank": 16}),  # full-rank truncation is the identity
        ("lors_svp", {"rank_fraction": 1.0}),
        ("lors_mp", {"density": 1.0}),
    ],
)
def test_degenerate_pruning_is_task_arithmetic(tmp_path, family, method, params):
    base_dir, expert_dirs = family
    pruned, _ = run_merge(tmp_path, base_dir, expert_dirs, method, {**params, "scale": 0.7}, weights=WEIGHTS)
    ta, _ = run_merge(tmp_path / "ta", base_dir, expert_dirs, "task_arithmetic", {"scale": 0.7}, weights=WEIGHTS)
    for name in ta:
        if name != TIED:
            torch.testing.assert_close(pruned[name], ta[name], atol=2e-6, rtol=1e-5, msg=name)


def test_randomised_low_rank_part_tracks_the_exact_one():
    """LoRS's `svd: randomised` on a task matrix with a decaying spectrum: the rank-7 part is within
    a small factor of the Eckart–Young optimum and reproducible from the seed."""
    from speechmerge.merging.spectral import low_rank_part

    g = torch.Generator().manual_seed(9)
    q1, _ = torch.linalg.qr(torch.randn(300, 120, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(200, 120, generator=g))
    tau = (q1 * 0.8 ** torch.arange(120.0)) @ q2.T
    exact, fast = low_rank_part(tau, 7), low_rank_part(tau, 7, randomised=True, seed=3)
    optimum = torch.linalg.matrix_norm(tau - exact, ord=2)
    assert torch.linalg.matrix_norm(tau - fast, ord=2) <= 1.05 * optimum
    torch.testing.assert_close(fast, exact, atol=2 * float(optimum), rtol=0)
    assert torch.equal(fast, low_rank_part(tau, 7, randomised=True, seed=3))
