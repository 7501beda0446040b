"""TSV-M, BoostedTSV-M, Iso-C and Iso-CTS against reference implementations written here from
the papers (float64, polar factors by whitening U(UᵀU)^(-1/2), the papers' other definition),
run through the real engine on a tiny Whisper family; plus the papers' invariants and the
ill-conditioned inputs that must never give NaN."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state
from method_calls import call_method
from test_merge_methods import TIED, deltas, run_merge
from test_spectral import reference_floor, whitened

from speechmerge.errors import SpeechmergeError
from speechmerge.merging import spectral

WEIGHTS = [1.0, 0.5, 2.0]


def truncated(tau: torch.Tensor, k: int):
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    return u[:, :k], s[:k], vh[:k]


def reference_tsv(taus: list[torch.Tensor], boost=None) -> torch.Tensor:
    """Gargiulo et al. §4: per task the top k = ⌊r/T⌋ triplets, concatenated, U and V whitened."""
    k = max(1, min(taus[0].shape) // len(taus))
    parts = [truncated(tau, k) for tau in taus]
    u = torch.cat([p[0] for p in parts], 1)
    s = torch.cat([p[1] if boost is None else boost(p[1], tau) for p, tau in zip(parts, taus)])
    v = torch.cat([p[2].T for p in parts], 1)
    return (whitened(u) * s) @ whitened(v).T


def reference_iso_c(taus: list[torch.Tensor]) -> torch.Tensor:
    """Marczak et al. Eq. (Iso-C): Σ_t Δ_t = U Σ Vᵀ → mean(σ) U Vᵀ."""
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    return s.mean() * u @ vh


def reference_iso_cts(taus: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """Marczak et al. Algorithm 1: common top-k_c directions of the sum, each task's top directions
    orthogonal to them, all whitened, with the mean singular value everywhere."""
    count, r = len(taus), min(taus[0].shape)
    common = r - round((r - int(r * fraction)) / count) * count
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    uc, sc, vc = u[:, :common], s[:common], vh[:common].T
    own = [truncated(tau - uc @ (uc.T @ tau), (r - common) // count) for tau in taus]
    big_u = torch.cat([p[0] for p in own] + [uc], 1)
    big_v = torch.cat([p[2].T for p in own] + [vc], 1)
    sigma = torch.cat([p[1] for p in own] + [sc]).mean()
    return sigma * whitened(big_u) @ whitened(big_v).T


def compare_to_reference(tmp_path, family, method, params, matrix_rule, scale, weights=WEIGHTS):
    """Run `method` on the tiny family with unequal weights; block matrices must match
    θ_0 + α matrix_rule([w_t τ_t]) and every other tensor θ_0 + α (1/T) Σ w_t τ_t."""
    base_dir, expert_dirs = family
    merged, report = run_merge(tmp_path, base_dir, expert_dirs, method, params, weights=weights)
    base, names, taus = deltas(base_dir, expert_dirs)
    matrices = [n for n in names if n.endswith(("proj.weight", "fc1.weight", "fc2.weight"))]
    assert matrices and "model.decoder.embed_positions.weight" not in matrices
    for name in names:
        scaled = [w * t[name].double() for w, t in zip(weights, taus)]
        rule = matrix_rule(scaled) if name in matrices else sum(scaled) / len(scaled)
        expected = base[name].double() + scale * rule
        torch.testing.assert_close(merged[name].double(), expected, atol=2e-5, rtol=1e-4, msg=name)
    return merged, report


def test_tsv_m_matches_the_paper(tmp_path, family):
    compare_to_reference(tmp_path, family, "tsv_m", {"scale": 1.3}, reference_tsv, 1.3)


@pytest.mark.parametrize("energy,spectrum", [("sigma", "truncated"), ("sigma_squared", "full")])
def test_boosted_tsv_m_matches_the_paper(tmp_path, family, energy, spectrum):
    def boost(kept, tau):
        reference = kept if spectrum == "truncated" else torch.linalg.svdvals(tau)
        floor = reference_floor(reference.tolist(), 0.3, energy == "sigma_squared")
        return kept.clamp(min=floor)

    params = {"beta": 0.3, "energy": energy, "spectrum": spectrum, "orthogonaliser": "svd"}
    compare_to_reference(tmp_path, family, "boosted_tsv_m", params, lambda taus: reference_tsv(taus, boost), 1.0)


def reference_tsv_newton_schulz(taus: list[torch.Tensor]) -> torch.Tensor:
    """TSV-M with Carvalho et al.'s orthogonaliser: each task's own top-k SVD (of w_t τ_t), U and Vᵀ
    through 5 Muon Newton–Schulz steps."""
    k = max(1, min(taus[0].shape) // len(taus))
    parts = [truncated(tau, k) for tau in taus]
    u, s, vh = (torch.cat([p[i] for p in parts], 1 if i == 0 else 0) for i in range(3))
    return (spectral.newton_schulz(u) * s) @ spectral.newton_schulz(vh)


@pytest.mark.parametrize(("orthogonaliser", "rule"), [("svd", reference_tsv), ("newton_schulz", None)])
def test_tsv_m_with_a_negative_weight_matches_the_paper(tmp_path, family, orthogonaliser, rule):
    """The reference decomposes w τ itself for w < 0; the method decomposes τ and carries w's sign in σ."""
    params = {"scale": 1.3, "orthogonaliser": orthogonaliser}
    rule = rule or reference_tsv_newton_schulz
    compare_to_reference(tmp_path, family, "tsv_m", params, rule, 1.3, weights=[1.0, -0.5, 2.0])


def test_iso_c_matches_the_paper_and_has_a_flat_spectrum(tmp_path, family):
    merged, _ = compare_to_reference(tmp_path, family, "iso_c", {"scale": 0.8}, reference_iso_c, 0.8)
    base = load_state(family[0])
    name = "model.encoder.layers.0.fc1.weight"
    spectrum = torch.linalg.svdvals((merged[name] - base[name]).double())
    torch.testing.assert_close(spectrum, torch.full_like(spectrum, float(spectrum.mean())), rtol=1e-3, atol=0)


def test_iso_cts_matches_the_paper(tmp_path, family):
    compare_to_reference(
        tmp_path, family, "iso_cts", {"common_fraction": 0.6}, lambda taus: reference_iso_cts(taus, 0.6), 1.0
    )


@pytest.mark.parametrize("orthogonaliser", ["svd", "newton_schulz"])
def test_boosted_tsv_m_with_beta_one_is_tsv_m(tmp_path, family, orthogonaliser):
    base_dir, experts = family
    boosted, _ = run_merge(
        tmp_path, base_dir, experts, "boosted_tsv_m", {"beta": 1.0, "orthogonaliser": orthogonaliser}
    )
    plain, _ = run_merge(tmp_path / "plain", base_dir, experts, "tsv_m", {"orthogonaliser": orthogonaliser})
    for name in plain:
        if name != TIED:
            torch.testing.assert_close(boosted[name], plain[name], atol=1e-7, rtol=1e-6, msg=name)


def test_tsv_m_with_one_task_returns_its_task_vector(tmp_path, family):
    """T = 1 keeps every triplet and the polar step is the identity: θ_0 + τ = the expert."""
    base_dir, experts = family
    merged, _ = run_merge(tmp_path, base_dir, experts[:1], "tsv_m")
    expert = load_state(experts[0])
    for name in merged:
        torch.testing.assert_close(merged[name], expert[name], atol=2e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("coefficients,bound", [("muon", 0.5), ("polar_express", 0.3)])
def test_newton_schulz_and_procrustes_tsv_m_agree(tmp_path, family, coefficients, bound):
    base_dir, experts = family
    ns, _ = run_merge(
        tmp_path, base_dir, experts, "tsv_m", {"orthogonaliser": "newton_schulz", "ns_coefficients": coefficients}
    )
    svd, _ = run_merge(tmp_path / "svd", base_dir, experts, "tsv_m")
    base = load_state(base_dir)
    for name in [n for n in svd if n.endswith(("fc1.weight", "q_proj.weight"))]:
        exact, approximate = svd[name] - base[name], ns[name] - base[name]
        assert float(torch.linalg.matrix_norm(approximate - exact) / torch.linalg.matrix_norm(exact)) < bound, name


# --- ill-conditioned inputs, directly on the method functions --------------------------------


def call(method: str, tasks: torch.Tensor, **params) -> torch.Tensor:
    return call_method(method, tasks, **params)


SUBSPACE = [
    ("tsv_m", {}),
    ("tsv_m", {"orthogonaliser": "newton_schulz"}),
    ("tsv_m", {"svd": "randomised"}),
    ("boosted_tsv_m", {}),
    ("boosted_tsv_m", {"orthogonaliser": "svd", "spectrum": "full"}),
    ("iso_c", {}),
    ("iso_cts", {}),
    ("iso_cts", {"orthogonaliser": "newton_schulz", "svd": "randomised"}),
]


def ill_conditioned_stacks() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    tau = torch.randn(48, 32, generator=g) * 1e-3
    rank_one = [torch.outer(torch.randn(48, generator=g), torch.randn(32, generator=g)) * 1e-3 for _ in range(3)]
    return {
        "identical": torch.stack([tau, tau, tau]),
        "near identical": torch.stack([tau, tau * (1 + 1e-7), tau + 1e-12]),
        "rank deficient": torch.stack(rank_one),
        "one all-zero": torch.stack([tau, torch.zeros_like(tau), -tau.flip(0)]),
        "all zero": torch.zeros(3, 48, 32),
    }


@pytest.mark.parametrize("case", list(ill_conditioned_stacks()))
@pytest.mark.parametrize("method,params", SUBSPACE)
def test_ill_conditioned_task_matrices_never_give_nan(method, params, case):
    tasks = ill_conditioned_stacks()[case]
    merged = call(method, tasks, **params)
    assert torch.isfinite(merged).all()
    assert float(merged.abs().max()) <= 10 * float(tasks.abs().sum(0).max()) + 1e-12  # nothing blows up
    if case == "all zero":
        assert torch.equal(merged, torch.zeros_like(merged))


def test_tsv_m_of_identical_experts_is_their_rank_truncation():
    """Procrustes on three copies of one subspace: the guard merges the copies, giving the
    rank-⌊r/T⌋ truncation of the common task matrix (without it: unit-length rounding noise).
    Copies that differ at float32 rounding ("near identical") only have to stay bounded (the
    test above): their singular vectors differ by up to 3e-6, which the guard cannot tell from
    the genuine small angles between distinct experts' subspaces (test_spectral.py)."""
    tasks = ill_conditioned_stacks()["identical"]
    u, s, vh = truncated(tasks[0].double(), 32 // 3)
    torch.testing.assert_close(call("tsv_m", tasks).double(), (u * s) @ vh, atol=1e-8, rtol=1e-4)


def test_randomised_svd_tracks_the_exact_tsv_m_on_low_rank_task_vectors():
    g = torch.Generator().manual_seed(12)
    low_rank = torch.stack([torch.randn(200, 4, generator=g) @ torch.randn(4, 150, generator=g) for _ in range(3)])
    exact = call("tsv_m", low_rank)
    randomised = call("tsv_m", low_rank, svd="randomised")
    torch.testing.assert_close(randomised, exact, atol=1e-3, rtol=1e-3)


def test_bad_subspace_parameters_are_one_line_errors(tmp_path, family):
    base_dir, experts = family
    with pytest.raises(SpeechmergeError, match="orthogonaliser"):
        run_merge(tmp_path, base_dir, experts, "tsv_m", {"orthogonaliser": "qr"})
    with pytest.raises(SpeechmergeError, match="beta"):
        run_merge(tmp_path, base_dir, experts, "boosted_tsv_m", {"beta": 0})
    assert not (tmp_path / "out-tsv_m").exists()


def test_iso_c_of_a_rank_deficient_sum_flattens_only_its_range():
    """The official code would add arbitrary null-space pairs u_i v_iᵀ with weight σ̄; here only
    the determined directions get the flat spectrum, so the result is unique."""
    tasks = ill_conditioned_stacks()["rank deficient"]  # three rank-1 task matrices: rank-3 sum
    u, s, vh = torch.linalg.svd(tasks.sum(0).double(), full_matrices=False)
    expected = s.mean() * u[:, :3] @ vh[:3]
    torch.testing.assert_close(call("iso_c", tasks).double(), expected, atol=1e-9, rtol=1e-4)
