"""LoRS-Merging and its SVP-only / MP-only ablations against a reference written here from the
paper and its official scripts (research/papers.md §1.3), on a tiny Whisper family; and the
invariants that tie them to task arithmetic."""

from __future__ import annotations

import pytest
import torch
from test_merge_methods import TIED, deltas, run_merge

WEIGHTS = [1.0, 0.5, 2.0]


def low_rank(tau: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def magnitude_pruned(x: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(ρ · numel) entries of largest |x| (the scripts' topk), zero the rest."""
    keep = x.abs().flatten().topk(int(density * x.numel())).indices
    out = torch.zeros(x.numel(), dtype=x.dtype)
    out[keep] = x.flatten()[keep]
    return out.reshape(x.shape)


def is_block_matrix(name: str) -> bool:
    return name.endswith(("proj.weight", "fc1.weight", "fc2.weight"))


def reference(taus, names, base, prune, lam):
    """θ_0 + λ Σ_t w_t τ̂_t with τ̂ = prune(τ) on block matrices and raw τ elsewhere."""
    return {
        n: base[n].double()
        + lam * sum(w * (prune(t[n].double()) if is_block_matrix(n) else t[n].double()) for w, t in zip(WEIGHTS, taus))
        for n in names
    }


def check(tmp_path, family, method, params, prune, lam):
    base_dir, expert_dirs = family
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, method, params, weights=WEIGHTS)
    base, names, taus = deltas(base_dir, expert_dirs)
    expected = reference(taus, names, base, prune, lam)
    for name in names:
        torch.testing.assert_close(merged[name].double(), expected[name], atol=2e-6, rtol=1e-5, msg=name)


def test_lors_matches_the_official_scripts(tmp_path, family):
    def prune(tau):
        low = low_rank(tau, 3)
        return low + magnitude_pruned(tau - low, 0.3)

    check(tmp_path, family, "lors", {"rank": 3, "density": 0.3, "scale": 0.6}, prune, 0.6)


def test_lors_rank_fraction_is_floored_and_at_least_one(tmp_path, family):
    """r = max(1, ⌊0.01 · 16⌋) = 1 for the tiny 16-wide matrices; λ defaults to 1/T."""

    def prune(tau):
        low = low_rank(tau, 1)
        return low + magnitude_pruned(tau - low, 0.2)

    check(tmp_path, family, "lors", {}, prune, 1 / 3)


def test_svp_only_matches_the_official_scripts(tmp_path, family):
    check(tmp_path, family, "lors_svp", {"rank": 2}, lambda tau: low_rank(tau, 2), 1 / 3)


def test_mp_only_matches_the_official_scripts(tmp_path, family):
    check(tmp_path, family, "lors_mp", {"density": 0.25, "scale": 0.5}, lambda tau: magnitude_pruned(tau, 0.25), 0.5)


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
    from speechmerge.merging.linalg import low_rank_part

    g = torch.Generator().manual_seed(9)
    q1, _ = torch.linalg.qr(torch.randn(300, 120, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(200, 120, generator=g))
    tau = (q1 * 0.8 ** torch.arange(120.0)) @ q2.T
    exact, fast = low_rank_part(tau, 7), low_rank_part(tau, 7, randomised=True, seed=3)
    optimum = torch.linalg.matrix_norm(tau - exact, ord=2)
    assert torch.linalg.matrix_norm(tau - fast, ord=2) <= 1.05 * optimum
    torch.testing.assert_close(fast, exact, atol=2 * float(optimum), rtol=0)
    assert torch.equal(fast, low_rank_part(tau, 7, randomised=True, seed=3))
