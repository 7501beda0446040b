"""The SVD primitives of the subspace methods against definitions written here: Eckart–Young
truncation, the polar factor as U(UᵀU)^(-1/2), Newton–Schulz's orthogonality band, and the
Subspace Boosting floor as a loop over the cumulative ratio."""

from __future__ import annotations

import pytest
import torch

from speechmerge.merging import spectral


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_spectrum(rows: int, cols: int, values: torch.Tensor, seed: int) -> torch.Tensor:
    """A random matrix with the given singular values (float32)."""
    g = generator(seed)
    q1, _ = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    r = len(values)
    return (q1[:, :r] * values.double()) @ q2[:, :r].T


def whitened(matrix: torch.Tensor) -> torch.Tensor:
    """The polar factor by its other definition: M (MᵀM)^(-1/2), in float64 (full column rank)."""
    m = matrix.double()
    transposed = m.shape[0] < m.shape[1]
    m = m.T if transposed else m
    evals, evecs = torch.linalg.eigh(m.T @ m)
    result = m @ (evecs * evals.rsqrt()) @ evecs.T
    return result.T if transposed else result


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_exact_top_singular_is_the_eckart_young_truncation(shape):
    a = torch.randn(*shape, generator=generator(1))
    u, s, vh = spectral.top_singular(a, 5)
    reference = torch.linalg.svdvals(a.double())
    torch.testing.assert_close(s.double(), reference[:5], rtol=1e-5, atol=1e-6)
    residual = torch.linalg.matrix_norm((a - (u * s) @ vh).double(), ord=2)
    torch.testing.assert_close(residual, reference[5], rtol=1e-4, atol=1e-6)


def test_randomised_top_singular_error_against_exact_on_a_decaying_spectrum():
    values = 0.7 ** torch.arange(60, dtype=torch.float64)
    a = with_spectrum(300, 200, values, seed=2).float()
    global_state = torch.random.get_rng_state()
    u, s, vh = spectral.top_singular(a, 8, randomised=True, seed=3)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the seeded draws leave the global RNG alone
    torch.testing.assert_close(s.double(), values[:8], rtol=1e-4, atol=1e-6)
    # Halko et al. Thm 10.6 with 2 power iterations: error within a small factor of σ_{k+1}
    error = torch.linalg.matrix_norm((a - (u * s) @ vh).double(), ord=2)
    assert error <= 1.05 * values[8]
    again = spectral.top_singular(a, 8, randomised=True, seed=3)
    assert torch.equal(again[0], u)  # seeded: reproducible


@pytest.mark.parametrize("shape", [(50, 12), (12, 50)])
def test_polar_factor_equals_the_whitening_definition(shape):
    a = torch.randn(*shape, generator=generator(4))
    torch.testing.assert_close(spectral.polar_factor(a).double(), whitened(a), atol=1e-5, rtol=1e-5)


def test_polar_factor_of_duplicated_subspaces_merges_them_instead_of_inflating_noise():
    u = torch.linalg.qr(torch.randn(30, 4, generator=generator(5)))[0]
    duplicated = torch.cat([u, u, u], 1)  # near-collinear tasks: the worst case for Procrustes
    polar = spectral.polar_factor(duplicated)
    # on its range the polar factor is U [I I I] / √3; the null directions are dropped, not made unit
    torch.testing.assert_close(polar, duplicated / 3**0.5, atol=1e-5, rtol=1e-5)
    assert torch.equal(spectral.polar_factor(torch.zeros(6, 3)), torch.zeros(6, 3))


@pytest.mark.parametrize("smallest", [1e-5, 1e-6])
def test_polar_factor_keeps_small_but_genuine_singular_values(smallest):
    """M = Q₁ diag(σ) Q₂ᵀ has polar factor Q₁ Q₂ᵀ whatever σ > 0. With σ_min/σ_max = 1e-5 or 1e-6
    on a 256 × 256 matrix — the second below the SVD's rounding level √n·ε ≈ 2e-6, as the smallest
    angles between three experts' subspaces of a Whisper-small matrix (2.9e-6, docs/performance.md)
    — the direction is kept: it is resolved (float32 rounding of M moves σ_min by about ε), and
    dropping it is an error of norm 1 in the factor."""
    g = generator(9)
    q1 = torch.linalg.qr(torch.randn(256, 256, generator=g, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(256, 256, generator=g, dtype=torch.float64))[0]
    sigma = torch.ones(256, dtype=torch.float64)
    sigma[-1] = smallest
    polar = spectral.polar_factor(((q1 * sigma) @ q2.T).float()).double()
    assert float(torch.linalg.matrix_norm(polar - q1 @ q2.T)) < 0.05  # dropping it costs 1


@pytest.mark.parametrize(
    "coefficients,band,difference",
    [("muon", (0.6, 1.25), 0.3), ("polar_express", (0.8, 1.2), 0.15)],
)
@pytest.mark.parametrize("shape", [(64, 24), (24, 64), (32, 32)])
def test_newton_schulz_is_close_to_the_polar_factor(coefficients, band, difference, shape):
    values = torch.linspace(1.0, 0.2, min(shape), dtype=torch.float64)
    a = with_spectrum(*shape, values, seed=6).float()
    approximation = spectral.newton_schulz(a, 5, coefficients)
    s = torch.linalg.svdvals(approximation)
    assert band[0] <= float(s.min()) and float(s.max()) <= band[1]  # orthogonality error bounded
    exact = spectral.polar_factor(a)
    assert float(torch.linalg.matrix_norm(approximation - exact) / torch.linalg.matrix_norm(exact)) < difference
    # zero directions stay zero: Newton–Schulz never fails on rank-deficient input
    assert torch.equal(spectral.newton_schulz(torch.zeros(5, 7), 5, coefficients), torch.zeros(5, 7))


def reference_floor(values: list[float], beta: float, squared: bool) -> float:
    """The first σ_j whose cumulative energy ratio reaches β, by a plain loop."""
    energy = [v * v if squared else v for v in values]
    total = sum(energy)
    running = 0.0
    for value, e in zip(values, energy):
        running += e
        if running / total >= beta:
            return value
    return values[-1]


@pytest.mark.parametrize("beta", [0.05, 0.3, 0.77, 1.0])
@pytest.mark.parametrize("energy", ["sigma", "sigma_squared"])
def test_boost_floor_follows_the_cumulative_energy_ratio(beta, energy):
    values = sorted(torch.rand(23, generator=generator(7)).tolist(), reverse=True)
    floor = spectral.boost_floor(torch.tensor(values, dtype=torch.float64), beta, energy)
    assert float(floor) == pytest.approx(reference_floor(values, beta, energy == "sigma_squared"))
    if beta == 1.0:
        assert float(floor) == values[-1]  # β = 1: no boost


def test_boost_floor_of_a_zero_spectrum_is_zero():
    assert float(spectral.boost_floor(torch.zeros(5), 0.3)) == 0.0


def test_an_svd_that_fails_to_converge_in_float32_is_retried_in_float64(monkeypatch):
    """LAPACK's gesdd can fail on float32 stacks of nearly orthonormal vectors (seen on a Whisper-base
    Iso-CTS stack); simulated here: the float32 call raises, the result must be the float64 SVD."""
    real_svd, real_svdvals = torch.linalg.svd, torch.linalg.svdvals
    calls = []

    def failing_in_float32(real):
        def decompose(matrix, *args, **kwargs):
            calls.append(matrix.dtype)
            if matrix.dtype == torch.float32:
                raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (error code: 1).")
            return real(matrix, *args, **kwargs)

        return decompose

    monkeypatch.setattr(torch.linalg, "svd", failing_in_float32(real_svd))
    monkeypatch.setattr(torch.linalg, "svdvals", failing_in_float32(real_svdvals))
    matrix = with_spectrum(12, 8, torch.tensor([3.0, 2.0, 1.0, 0.5]), seed=4).float()
    u, s, vh = spectral.thin_svd(matrix)
    assert calls == [torch.float32, torch.float64]
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert torch.allclose(s[:4], torch.tensor([3.0, 2.0, 1.0, 0.5]), atol=1e-5)
    assert torch.allclose((u * s) @ vh, matrix, atol=1e-5)
    assert torch.allclose(spectral.polar_factor(matrix), whitened_pseudo(matrix), atol=1e-5)
    assert torch.allclose(spectral.singular_values(matrix)[:4], s[:4])
    with pytest.raises(torch.linalg.LinAlgError):  # float64 failures are not hidden
        monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: (_ for _ in ()).throw(torch.linalg.LinAlgError("x")))
        spectral.thin_svd(matrix.double())


def whitened_pseudo(matrix: torch.Tensor) -> torch.Tensor:
    """The polar factor of a rank-deficient matrix from its float64 SVD, null directions dropped."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    keep = s > s.max() * 1e-6
    return (u[:, keep] @ vh[keep]).float()


def test_per_task_decompositions_run_on_every_thread_and_give_the_serial_results():
    """map_decompositions: the serial results in order, calls spread over torch's threads (each on
    one thread inside), the thread count restored after; serial for matrices too big to copy twice."""
    import threading

    generator = torch.Generator().manual_seed(5)
    matrices = [torch.randn(60, 40, generator=generator) for _ in range(4)]
    seen = set()

    def decompose(index):
        seen.add((threading.get_ident(), torch.get_num_threads()))
        return spectral.gram_svd(matrices[index], 8)

    serial = [spectral.gram_svd(m, 8) for m in matrices]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = spectral.map_decompositions(decompose, list(range(4)), matrices[0])
        assert torch.get_num_threads() == 2
        assert {threads for _, threads in seen} == {1}  # each call on one thread ...
        assert threading.get_ident() not in {ident for ident, _ in seen}  # ... in the pool's threads
        for ours, theirs in zip(parallel, serial):
            for a, b in zip(ours, theirs):
                assert torch.allclose(a.abs(), b.abs(), atol=1e-5)
        seen.clear()
        big = torch.empty(spectral.PARALLEL_DECOMPOSITION_BYTES // 16, dtype=torch.uint8)  # numel only
        spectral.map_decompositions(decompose, list(range(4)), big)
        assert seen == {(threading.get_ident(), 2)}  # serial, in the caller's thread
    finally:
        torch.set_num_threads(before)
