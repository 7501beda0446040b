"""SVD primitives of the subspace merge methods: top singular triplets (exact or randomised),
orthogonalisation (polar factor by SVD, i.e. orthogonal Procrustes, or Newton–Schulz) and
spectrum boosting. Everything works on one float32 matrix at a time, on its own device.
"""

from __future__ import annotations

import contextlib

import torch

# Newton–Schulz quintic coefficients (a, b, c) per step: X ← aX + (bA + cA²)X with A = XXᵀ.
# Muon's constant triple (Jordan et al. 2024, github.com/KellerJordan/Muon) and the 5-step
# "Polar Express" schedule (Amsel et al. 2025, arXiv 2505.16932; as in modded-nanogpt, whose
# normalisation divides by 1.02 ‖X‖_F).
NORMALISATION_SAFETY = {"muon": 1.0, "polar_express": 1.02}
NEWTON_SCHULZ_COEFFICIENTS = {
    "muon": ((3.4445, -4.7750, 2.0315),),
    "polar_express": (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ),
}
RANDOMISED_OVERSAMPLING = 10  # Halko, Martinsson, Tropp (2011) §4.2: p = 10 extra samples
RANDOMISED_POWER_ITERATIONS = 2  # torch.svd_lowrank's default subspace iterations


@contextlib.contextmanager
def one_thread():
    """Run LAPACK's decompositions on one thread, restoring the thread count after.

    MKL's multi-threaded symmetric eigensolver gains nothing on Whisper's shapes and collapses
    when other processes hold the cores: on the 2-core development VM at load 3.3, a float64 eigh
    of an n × n Gram took, median (max) of 5, 0.077 (0.095) s on one thread against 0.125 (7.2) s
    on two for n = 512, 0.17 against 3.5 s for n = 768, 0.72 against 1.7 s for n = 1280, and
    0.002 against 0.90 s for n = 128 (`benchmarks/bench_gram_svd.py --threads-check`; docs/
    performance.md). The matrix products around the decompositions keep every thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


PARALLEL_DECOMPOSITION_BYTES = 1 << 28  # float64 working copies above this run one at a time (memory)


def map_decompositions(decompose, items: list, matrix: torch.Tensor) -> list:
    """[decompose(item) for item in items], with as many calls at once as torch has threads, each
    on one thread (LAPACK and the products around it): the calls are independent and torch
    releases the GIL inside them, so T per-task decompositions use every core. Serial on a GPU,
    for one item, on one thread, or when the float64 working copies (two per call) of matrices
    the size of `matrix` would exceed PARALLEL_DECOMPOSITION_BYTES."""
    workers = min(torch.get_num_threads(), len(items))
    too_big = 2 * 8 * matrix.numel() * workers > PARALLEL_DECOMPOSITION_BYTES
    if workers <= 1 or matrix.device.type != "cpu" or too_big:
        return [decompose(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with one_thread(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(decompose, items))


def _eigh(matrix: torch.Tensor):
    with one_thread():
        return torch.linalg.eigh(matrix)


def _svd(matrix: torch.Tensor):
    with one_thread():
        return torch.linalg.svd(matrix, full_matrices=False)


def _svdvals(matrix: torch.Tensor):
    with one_thread():
        return torch.linalg.svdvals(matrix)


def singular_mask(singular_values: torch.Tensor, relative_tolerance: float) -> torch.Tensor:
    """1 where σ > σ_max · relative_tolerance, else 0 (all 0 for an all-zero spectrum)."""
    return (singular_values > singular_values.max() * relative_tolerance).to(singular_values.dtype)


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, σ, Vᵀ of a thin SVD (LAPACK gesdd through torch.linalg.svd). gesdd's divide and conquer
    can fail to converge in float32 on matrices with clusters of nearly equal singular values,
    such as the stacks of singular vectors that Procrustes orthogonalises (seen on a 512 × 512
    Iso-CTS stack of Whisper-base experts); a failure is retried in float64, which converges
    there, and cast back."""
    return _in_float64_on_failure(_svd, matrix)


def gram_svd(matrix: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, σ, Vᵀ of a thin SVD (its leading `rank` triplets when given) from the symmetric eigendecomposition of the Gram matrix of the
    smaller side, in float64: MᵀM = V Σ² Vᵀ and U = M V Σ⁻¹ for a tall M (M Mᵀ and Vᵀ = Σ⁻¹ UᵀM
    for a wide one), σ in descending order.

    Squaring the spectrum costs float64 about half its digits: σ is resolved to about
    √ε₆₄ · σ_max ≈ 1.5e-8 σ_max, far below float32's SVD rounding level (`rounding_tolerance`,
    ≥ 3e-6 σ_max for Whisper's shapes), so every triplet above that level matches the LAPACK
    SVD's to float32 rounding; vectors of σ at or below 1e-8 σ_max (numerically null, which
    every caller drops) are set to zero. On a 2-core CPU a 3072 × 768 float32 SVD takes about
    2.5× as long as this. With `rank`, only the kept eigenvectors are mapped to the other side."""
    tall = matrix.shape[-2] >= matrix.shape[-1]
    wide64 = matrix.double() if not tall else matrix.double().mT
    values, vectors = _eigh(wide64 @ wide64.mT)
    values, vectors = values.flip(-1)[..., :rank], vectors.flip(-1)[..., :rank]
    sigma = values.clamp(min=0).sqrt()
    resolved = sigma > sigma[..., :1] * 1e-8
    inverse = torch.where(resolved, 1.0 / torch.where(resolved, sigma, 1.0), 0.0)
    other = (vectors.mT @ wide64) * inverse[..., :, None]  # Σ⁻¹ Pᵀ W: the other side's vectors, as rows
    left, right = (vectors, other) if not tall else (other.mT, vectors.mT)
    return left.to(matrix.dtype), sigma.to(matrix.dtype), right.to(matrix.dtype)


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """σ alone (torch.linalg.svdvals), with `thin_svd`'s float64 retry."""
    return _in_float64_on_failure(_svdvals, matrix)


def _in_float64_on_failure(decompose, matrix: torch.Tensor):
    try:
        return decompose(matrix)
    except torch.linalg.LinAlgError:
        if matrix.dtype == torch.float64:
            raise
        result = decompose(matrix.double())
        return tuple(x.to(matrix.dtype) for x in result) if isinstance(result, tuple) else result.to(matrix.dtype)


def rounding_tolerance(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> float:
    """√max(m, n) · ε: the rounding level of an SVD. Singular values below it are numerically zero
    and their singular vectors arbitrary (LAPACK's completion of a null space, or noise in a
    randomised range); genuine small ones of noise-like task matrices (σ_min/σ_max ≈ 1e-4 for a
    768 × 768 update) stay well above it."""
    return max(shape[-2:]) ** 0.5 * torch.finfo(dtype).eps


def top_singular(
    matrix: torch.Tensor, k: int, randomised: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k leading singular triplets (U_k [m, k], σ_k [k], V_kᵀ [k, n]) of a matrix, with the
    numerically null ones (below `rounding_tolerance`) zeroed: their singular vectors are
    arbitrary, so no result may depend on them.

    Exact: `gram_svd`. Randomised: Halko et al.'s range finder with p = 10 oversampling
    and 2 power iterations (torch.svd_lowrank), seeded so that a merge is reproducible.
    """
    if randomised and k + RANDOMISED_OVERSAMPLING < min(matrix.shape):
        with torch.random.fork_rng(devices=[matrix.device] if matrix.is_cuda else []):
            torch.manual_seed(seed)  # seeds the CPU and CUDA generators inside the fork only
            u, s, v = torch.svd_lowrank(matrix, q=k + RANDOMISED_OVERSAMPLING, niter=RANDOMISED_POWER_ITERATIONS)
        u, s, vh = u[:, :k], s[:k], v[:, :k].mT
    else:
        u, s, vh = gram_svd(matrix, k)
    if s.numel() == 0:
        return u, s, vh
    kept = singular_mask(s, rounding_tolerance(matrix.shape, matrix.dtype))
    return u * kept, s * kept, vh * kept[:, None]


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (or rows): P Qᵀ from M = P Σ Qᵀ (orthogonal
    Procrustes; Schönemann 1966), as in TSV-M's and Iso-CTS's official code.

    Guard for coinciding inputs: directions with σ ≤ σ_max · ε (ε of the matrix's dtype) are
    dropped instead of being inflated to unit length, so duplicated subspaces merge instead of
    adding rounding noise; an all-zero matrix gives zeros. Exact duplicates reach σ ≲ 1e-8 σ_max
    through `gram_svd`'s float64 Gram, while genuinely nearly dependent subspaces go much lower
    than the SVD's rounding level √max(m, n) · ε: three random experts' 256-dimensional subspaces
    of a Whisper-small 768 × 768 matrix gave σ_min ≈ 2.9e-6 σ_max, and dropping it (the earlier cut
    at √768 · ε ≈ 3.3e-6) moved that TSV-M merge by 7.5e-2 of its scale from the float64 one,
    keeping it by 2.2e-6 (docs/performance.md). The SVD is `gram_svd`'s.
    """
    u, s, vh = gram_svd(matrix)
    return (u * singular_mask(s, torch.finfo(matrix.dtype).eps)) @ vh


def newton_schulz(matrix: torch.Tensor, steps: int = 5, coefficients: str = "muon") -> torch.Tensor:
    """Approximate polar factor by the quintic Newton–Schulz iteration (as Muon):
    X₀ = M / ‖M‖_F (so σ ≤ 1), on the wide orientation; X ← aX + (bA + cA²)X, A = XXᵀ.
    Only approximately orthogonal (Muon's triple leaves σ in about [0.7, 1.2]); zero
    directions stay zero, so it never fails on rank-deficient inputs."""
    schedule = NEWTON_SCHULZ_COEFFICIENTS[coefficients]
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.mT if tall else matrix
    x = x / (torch.linalg.matrix_norm(x) * NORMALISATION_SAFETY[coefficients] + 1e-7)
    for step in range(steps):
        a, b, c = schedule[min(step, len(schedule) - 1)]
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def orthogonalise(matrix: torch.Tensor, how: str, steps: int = 5, coefficients: str = "muon") -> torch.Tensor:
    """Replace a matrix by its (approximate) polar factor: `svd` (Procrustes) or `newton_schulz`."""
    if how == "svd":
        return polar_factor(matrix)
    return newton_schulz(matrix, steps, coefficients)


def boost_floor(singular_values: torch.Tensor, beta: float, energy: str = "sigma") -> torch.Tensor:
    """Subspace Boosting's floor (Skorobogat et al. 2025, arXiv 2506.16506): the σ_j at the
    first index j where the cumulative energy ratio Σ_{i≤j} e_i / Σ_i e_i reaches β, with
    e = σ (`sigma`, as the reference code) or σ² (`sigma_squared`). β = 1 gives the smallest
    σ, i.e. no boost; an all-zero spectrum gives 0."""
    values = singular_values if energy == "sigma" else singular_values.square()
    total = values.sum()
    if total <= 0:
        return singular_values.new_zeros(())
    below = int((torch.cumsum(values, 0) / total < beta).sum())
    return singular_values[min(below, singular_values.numel() - 1)]


def low_rank_part(matrix: torch.Tensor, rank: int, randomised: bool = False, seed: int = 0) -> torch.Tensor:
    """The best rank-r approximation U_r diag(σ_r) V_r^T of a matrix (Eckart–Young), by exact SVD
    or by a seeded randomised SVD (spectral.top_singular)."""
    if rank >= min(matrix.shape):
        return matrix.clone()
    u, s, vh = top_singular(matrix, rank, randomised, seed)
    return (u * s) @ vh
