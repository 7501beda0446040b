"""The foundation's methods against closed forms and reference implementations written here
from the papers, run through the real engine on a tiny Whisper family."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_state
from near_ties import assert_close_except_near_ties, near_cut, near_zero_sum

from speechmerge.merging.api import merge
from speechmerge.recipe import parse_recipe

TIED = "proj_out.weight"


def run_merge(tmp_path, base, experts, method, params=None, weights=None, **extra):
    experts_spec = [
        {"path": str(e), **({"weight": w} if weights else {})}
        for e, w in zip(experts, weights or [None] * len(experts))
    ]
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": experts_spec,
            "method": method,
            "params": params or {},
            "output": str(tmp_path / f"out-{method}"),
            **extra,
        }
    )
    out, report = merge(recipe, show_progress=False)
    return load_state(out), report


def deltas(base_dir, expert_dirs):
    base = load_state(base_dir)
    experts = [load_state(d) for d in expert_dirs]
    names = [n for n in base if n != TIED]
    return base, names, [{n: e[n] - base[n] for n in names} for e in experts]


def assert_close(merged, expected, names, atol=1e-6):
    for name in names:
        torch.testing.assert_close(merged[name], expected[name], atol=atol, rtol=1e-5, msg=name)


def test_soup_is_the_weighted_average(tmp_path, family):
    base_dir, expert_dirs = family
    weights = [1.0, 2.0, 3.0]
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, "soup", weights=weights)
    experts = [load_state(d) for d in expert_dirs]
    expected = {n: sum(w * e[n] for w, e in zip(weights, experts)) / 6.0 for n in experts[0]}
    assert_close(merged, expected, [n for n in expected if n != TIED])


def test_soup_needs_no_base(tmp_path, family):
    _, expert_dirs = family
    recipe = parse_recipe({"experts": [str(d) for d in expert_dirs], "method": "soup", "output": str(tmp_path / "o")})
    out, _ = merge(recipe, show_progress=False)
    experts = [load_state(d) for d in expert_dirs]
    name = "model.decoder.layers.0.fc1.weight"
    torch.testing.assert_close(load_state(out)[name], sum(e[name] for e in experts) / 3)


@pytest.mark.parametrize("scale", [None, 0.7])
def test_task_arithmetic_closed_form(tmp_path, family, scale):
    base_dir, expert_dirs = family
    weights = [1.0, 0.5, 2.0]
    params = {} if scale is None else {"scale": scale}
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, "task_arithmetic", params, weights=weights)
    base, names, taus = deltas(base_dir, expert_dirs)
    lam = 1 / 3 if scale is None else scale
    expected = {n: base[n] + lam * sum(w * t[n] for w, t in zip(weights, taus)) for n in names}
    assert_close(merged, expected, names)


def test_task_arithmetic_of_identical_experts_with_mean_scale_returns_the_expert(tmp_path, family):
    base_dir, expert_dirs = family
    merged, _ = run_merge(tmp_path, base_dir, [expert_dirs[0]] * 3, "task_arithmetic")
    expert = load_state(expert_dirs[0])
    assert_close(merged, expert, [n for n in expert if n != TIED], atol=1e-6)


# --- TIES: reference written from Yadav et al. (2023), Algorithm 1 -------------------------


def reference_ties(base, names, taus, density, lam, global_topk):
    """Trim (keep top-k% |τ| of each task vector), elect sign by mass, disjoint mean, scale.

    Also returns, per tensor, the entries whose trim or sign election lies within rounding of its
    boundary (a magnitude at the k-th largest, a sign sum at zero): they may go either way."""
    T = len(taus)
    trimmed = [dict() for _ in range(T)]
    exempt = {n: torch.zeros(base[n].shape, dtype=torch.bool) for n in names}
    for t in range(T):
        if global_topk:
            flat = torch.cat([taus[t][n].flatten() for n in names]).abs()
            k = math.floor(density * flat.numel())
            threshold = torch.sort(flat, descending=True).values[k - 1]
            near = near_cut(flat, k)
            for n, part in zip(names, near.split([taus[t][n].numel() for n in names])):
                exempt[n] |= part.reshape(base[n].shape)
                trimmed[t][n] = torch.where(taus[t][n].abs() >= threshold, taus[t][n], 0.0)
        else:
            for n in names:
                flat = taus[t][n].flatten().abs()
                k = math.floor(density * flat.numel())
                threshold = torch.sort(flat, descending=True).values[k - 1] if k > 0 else math.inf
                exempt[n] |= near_cut(flat, k).reshape(base[n].shape)
                trimmed[t][n] = torch.where(taus[t][n].abs() >= threshold, taus[t][n], 0.0)
    out = {}
    for n in names:
        stacked = torch.stack([trimmed[t][n] for t in range(T)])
        elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
        agree = (torch.sign(stacked) == elected).float()
        count = agree.sum(0)
        mean = (stacked * agree).sum(0) / count.clamp(min=1)
        out[n] = base[n] + lam * mean
        exempt[n] |= near_zero_sum(stacked)
    return out, exempt


def assert_close_except(merged, expected, exempt, names, atol=1e-6):
    for name in names:
        assert_close_except_near_ties(merged[name], expected[name], exempt[name], atol=atol, rtol=1e-5, msg=name)


@pytest.mark.parametrize("topk", ["global", "per_tensor"])
@pytest.mark.parametrize("density", [0.2, 0.55])
def test_ties_matches_reference(tmp_path, family, topk, density):
    base_dir, expert_dirs = family
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, "ties", {"density": density, "scale": 1.3, "topk": topk})
    base, names, taus = deltas(base_dir, expert_dirs)
    expected, exempt = reference_ties(base, names, taus, density, 1.3, global_topk=(topk == "global"))
    assert_close_except(merged, expected, exempt, names)


def test_ties_global_spends_its_budget_on_trained_tensors(tmp_path, frozen_family):
    """With a frozen encoder the whole-model top-k keeps 2x the density in the decoder."""
    base_dir, expert_dirs = frozen_family
    merged, report = run_merge(tmp_path, base_dir, expert_dirs, "ties", {"density": 0.1, "scale": 1.0})
    base, names, taus = deltas(base_dir, expert_dirs)
    expected, exempt = reference_ties(base, names, taus, 0.1, 1.0, global_topk=True)
    assert_close_except(merged, expected, exempt, names)
    encoder = [n for n in names if n.startswith("model.encoder.")]
    assert set(encoder) <= set(report.frozen)


# --- DARE: Yu et al. (2024): drop with probability p, rescale survivors by 1/(1-p) --------


def test_dare_without_dropping_is_task_arithmetic(tmp_path, family):
    base_dir, expert_dirs = family
    dare, _ = run_merge(tmp_path, base_dir, expert_dirs, "dare", {"drop": 0.0, "scale": 0.4})
    ta, _ = run_merge(tmp_path / "ta", base_dir, expert_dirs, "task_arithmetic", {"scale": 0.4})
    assert_close(dare, ta, [n for n in ta if n != TIED])


def test_dare_ties_without_dropping_is_untrimmed_ties(tmp_path, family):
    base_dir, expert_dirs = family
    dare, _ = run_merge(tmp_path, base_dir, expert_dirs, "dare", {"drop": 0.0, "combine": "ties"})
    base, names, taus = deltas(base_dir, expert_dirs)
    expected, exempt = reference_ties(base, names, taus, 1.0, 1.0, global_topk=False)
    assert_close_except(dare, expected, exempt, names)


def test_dare_survivors_are_rescaled_and_the_drop_rate_holds(tmp_path, family):
    base_dir, expert_dirs = family
    p = 0.7
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs[:1], "dare", {"drop": p, "scale": 1.0})
    base, names, taus = deltas(base_dir, expert_dirs[:1])
    name = "model.decoder.embed_tokens.weight"
    delta = merged[name] - base[name]
    kept = delta != 0
    torch.testing.assert_close(delta[kept], taus[0][name][kept] / (1 - p), rtol=1e-4, atol=1e-6)
    fraction = kept.float().mean().item()
    n = delta.numel()
    assert abs(fraction - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


def test_dare_is_reproducible_and_seeded(tmp_path, family):
    base_dir, expert_dirs = family
    a, _ = run_merge(tmp_path / "a", base_dir, expert_dirs, "dare", {"drop": 0.5}, seed=3)
    b, _ = run_merge(tmp_path / "b", base_dir, expert_dirs, "dare", {"drop": 0.5}, seed=3)
    c, _ = run_merge(tmp_path / "c", base_dir, expert_dirs, "dare", {"drop": 0.5}, seed=4)
    name = "model.decoder.layers.1.fc2.weight"
    assert torch.equal(a[name], b[name])
    assert not torch.equal(a[name], c[name])


def test_dare_expectation_is_task_arithmetic(tmp_path, family):
    """E[DARE(τ)] = τ, so the mean of DARE merges over seeds converges to task arithmetic
    (within 5 standard errors, computed from the Bernoulli variance, for every entry)."""
    base_dir, expert_dirs = family
    p, seeds = 0.5, 40
    base, names, taus = deltas(base_dir, expert_dirs)
    name = "model.decoder.layers.0.self_attn.q_proj.weight"
    runs = torch.stack(
        [
            run_merge(tmp_path / f"s{s}", base_dir, expert_dirs, "dare", {"drop": p}, seed=s)[0][name]
            for s in range(seeds)
        ]
    )
    ta = base[name] + sum(t[name] for t in taus) / 3
    # Var of one merged entry: Σ_t (τ_t/3)^2 · p/(1-p); the mean over seeds has that / seeds.
    std_err = torch.sqrt(sum((t[name] / 3) ** 2 for t in taus) * p / (1 - p) / seeds)
    assert torch.all((runs.mean(0) - ta).abs() <= 5 * std_err + 1e-7)


# --- MP-only (LoRS ablation): per block matrix, keep the top ρ by magnitude ---------------


def test_lors_mp_prunes_block_matrices_only(tmp_path, family):
    base_dir, expert_dirs = family
    density = 0.3
    merged, _ = run_merge(tmp_path, base_dir, expert_dirs, "lors_mp", {"density": density})
    base, names, taus = deltas(base_dir, expert_dirs)
    matrices = {
        n
        for n in names
        if n.endswith(
            ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")
        )
    }
    expected, exempt = {}, {}
    for n in names:
        pruned, exempt[n] = [], torch.zeros(base[n].shape, dtype=torch.bool)
        for t in taus:
            x = t[n]
            if n in matrices:
                k = math.floor(density * x.numel())
                keep = torch.zeros(x.numel(), dtype=torch.bool)
                keep[x.abs().flatten().topk(k).indices] = True
                x = x * keep.reshape(x.shape)
                exempt[n] |= near_cut(t[n].abs().flatten(), k).reshape(x.shape)
            pruned.append(x)
        expected[n] = base[n] + sum(pruned) / 3
    assert_close_except(merged, expected, exempt, names)
    assert len(matrices) == 2 * 6 + 2 * 10  # 2 encoder + 2 decoder layers of a tiny Whisper
