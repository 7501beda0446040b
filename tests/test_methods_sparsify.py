"""PCB, SCE, Model Breadcrumbs and DELLA against reference implementations written here from
their papers (whole-tensor softmaxes and sorts, no chunking, float64), run through the engine on a
tiny Whisper family; DELLA's randomness is checked by its statistics and its seeding.

Each reference also returns the entries whose selection (a top-k cut, a sign election) lies within
rounding of its boundary: the engine's float32 scores may put them on the other side, so they are
exempt from the comparison (counted and bounded, see near_ties.py)."""

from __future__ import annotations

import pytest
import torch
from method_calls import call_method, tensor_context
from near_ties import assert_close_except_near_ties, near_cut, near_zero_sum
from test_merge_methods import deltas, run_merge

from speechmerge.errors import SpeechmergeError
from speechmerge.merging import masks

WEIGHTS = [1.0, 0.5, 2.0]


def top_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1 on the k largest scores of a flat vector."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[scores.topk(k).indices] = True
    return mask


def reference_pcb(taus: list[torch.Tensor], weights: list[float], density: float):
    """Du et al. (2024) Eqs. 1–4 on one tensor: intra- and inter-balancing softmaxes of min–max
    normalised products, top-r of β per task, β-weighted mean."""
    flat = [t.flatten() for t in taus]
    count, size = len(flat), flat[0].numel()

    def norm(x):
        return (x - x.min()) / (x.max() - x.min())

    merged_num, merged_den = torch.zeros(size, dtype=flat[0].dtype), torch.zeros(size, dtype=flat[0].dtype)
    exempt = torch.zeros(size, dtype=torch.bool)
    for i in range(count):
        intra = torch.softmax(count * norm(flat[i] * flat[i]), 0)
        inter = sum(torch.softmax(norm(flat[i] * flat[j]), 0) for j in range(count))
        beta = intra * inter
        beta_hat = beta * top_mask(beta, int(density * size))
        exempt |= near_cut(beta, int(density * size))
        merged_num += beta_hat * weights[i] * flat[i]
        merged_den += beta_hat
    merged = torch.where(merged_den > 0, merged_num / merged_den, 0.0)
    return merged.reshape(taus[0].shape), exempt.reshape(taus[0].shape)


def reference_sce(taus: list[torch.Tensor], weights: list[float], topk: float):
    """FuseChat's select (top-τ variance), calculate (η ∝ ‖τ̂‖²), erase (sign of the sum)."""
    stacked = torch.stack([t.flatten() for t in taus])
    variance = stacked.var(0, unbiased=False)
    k = int(topk * int((variance != 0).sum()))
    keep = top_mask(variance, k)
    selected = stacked * keep
    eta = torch.tensor(weights, dtype=stacked.dtype) * selected.square().sum(1)
    eta = eta / eta.sum()
    sign = torch.where(selected.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(selected) == sign) * eta[:, None]
    num, den = (agree * selected).sum(0), agree.sum(0)
    merged = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    exempt = near_cut(variance, k) | near_zero_sum(selected)
    return merged.reshape(taus[0].shape), exempt.reshape(taus[0].shape)


def reference_breadcrumbs_mask(tau: torch.Tensor, density: float, gamma: float, scope: str):
    """Davari & Belilovsky: sort |τ| descending, drop the first ⌊γn⌋, keep the next ⌊βn⌋; and the
    entries within rounding of either cut."""
    rows = tau.reshape(1, -1) if scope == "tensor" or tau.dim() == 1 else tau.reshape(tau.shape[0], -1)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    n = rows.shape[1]
    top, keep = int(gamma * n), masks.kept_count(n, density)
    order = rows.abs().argsort(dim=1, descending=True)
    mask.scatter_(1, order[:, top : top + keep], True)
    exempt = near_cut(rows.abs(), top, dim=1) | near_cut(rows.abs(), top + keep, dim=1)
    return mask.reshape(tau.shape), exempt.reshape(tau.shape)


def compare(tmp_path, family, method, params, rule):
    """The merged tensors against θ_0 + rule(τ's), where `rule` gives (update, exempt entries)."""
    base_dir, expert_dirs = family
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, method, params, weights=WEIGHTS)
    base, names, taus = deltas(base_dir, expert_dirs)
    for name in names:
        update, exempt = rule([t[name].double() for t in taus])
        expected = base[name].double() + update
        assert_close_except_near_ties(merged[name], expected, exempt, atol=1e-6, rtol=1e-5, msg=name)


def test_pcb_matches_the_paper(tmp_path, family):
    def rule(taus):
        update, exempt = reference_pcb(taus, WEIGHTS, 0.2)
        return 1.1 * update, exempt

    compare(tmp_path, family, "pcb", {"density": 0.2, "scale": 1.1}, rule)


def test_sce_matches_fusechat(tmp_path, family):
    compare(tmp_path, family, "sce", {"select_topk": 0.3}, lambda taus: reference_sce(taus, WEIGHTS, 0.3))


@pytest.mark.parametrize("scope", ["tensor", "row"])
@pytest.mark.parametrize("gamma", [0.01, 0.0])
def test_breadcrumbs_matches_the_paper(tmp_path, family, scope, gamma):
    def rule(taus):
        masks = [reference_breadcrumbs_mask(t, 0.3, gamma, scope) for t in taus]
        exempt = torch.zeros(taus[0].shape, dtype=torch.bool)
        for _, near in masks:
            exempt |= near
        return 0.9 * sum(w * t * mask for w, t, (mask, _) in zip(WEIGHTS, taus, masks)), exempt

    compare(tmp_path, family, "breadcrumbs", {"density": 0.3, "gamma": gamma, "scale": 0.9, "scope": scope}, rule)


def test_breadcrumbs_with_gamma_zero_keeps_the_top_magnitudes():
    """mergekit keeps nothing at γ = 0 (an empty slice); the paper's rule keeps the top ⌊βn⌋."""
    tau = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    merged = call("breadcrumbs", tau[None], density=0.2, gamma=0.0, scale=1.0)
    kept = merged != 0
    assert int(kept.sum()) == 40
    assert float(tau.abs()[kept].min()) >= float(tau.abs()[~kept].max())  # the 40 largest, outliers included


# --- DELLA: random, so its statistics and seeding -----------------------------------------


def call(method: str, tasks: torch.Tensor, seed: int = 0, **params) -> torch.Tensor:
    return call_method(method, tasks, ctx=tensor_context("model.decoder.layers.0.fc1.weight", seed=seed), **params)


def test_della_keeps_larger_magnitudes_more_often_and_is_unbiased():
    tau = torch.randn(1, 400, 500, generator=torch.Generator().manual_seed(2))
    merged = call("della", tau, drop=0.4, window=0.3)[None]  # one task: the elect/fuse step is the identity
    kept = merged != 0
    assert abs(float(kept.float().mean()) - 0.6) < 0.005  # mean keep probability 1 − p
    order = tau.abs().argsort(dim=2)
    by_rank = kept.gather(2, order).float().mean(dim=(0, 1))  # keep rate per rank position in a row
    assert abs(float(by_rank[:50].mean()) - (0.6 - 0.15 + 0.3 * 24.5 / 499)) < 0.03  # lowest ranks: ~0.46
    assert abs(float(by_rank[-50:].mean()) - (0.6 + 0.15 - 0.3 * 24.5 / 499)) < 0.03  # highest ranks: ~0.74
    ratio = merged[kept] / tau[kept]
    assert float(ratio.min()) >= 1 / 0.75 - 1e-5 and float(ratio.max()) <= 1 / 0.45 + 1e-5  # rescaled by 1/p
    # E[τ̂] = τ: the signed mass is preserved (relative standard deviation here ≈ 0.3%)
    assert abs(float((merged * tau.sign()).sum() / tau.abs().sum()) - 1) < 0.015


def test_della_is_reproducible_from_the_seed():
    tasks = torch.randn(3, 30, 20, generator=torch.Generator().manual_seed(3))
    first, again, other = call("della", tasks, seed=5), call("della", tasks, seed=5), call("della", tasks, seed=6)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_della_with_a_degenerate_window_is_a_one_line_error(tmp_path, family):
    base_dir, expert_dirs = family
    with pytest.raises(SpeechmergeError, match="window"):
        run_merge(tmp_path, base_dir, expert_dirs, "della", {"drop": 0.1, "window": 0.5})
    assert not (tmp_path / "out-della").exists()
