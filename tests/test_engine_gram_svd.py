"""The subspace methods' SVDs from Gram eigendecompositions (spectral.gram_svd) against LAPACK's
SVD: the same merge on full-rank inputs to 1e-4 of the task-vector scale, and the same triplets."""

from __future__ import annotations

import pytest
import torch

from speechmerge.merging import spectral
from speechmerge.merging.methods import subspace
from tests.method_calls import call_method


def lapack_svd(matrix: torch.Tensor, rank: int | None = None):
    """The reference: LAPACK's thin SVD in float64 (its leading `rank` triplets), cast back."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u[:, :rank].to(matrix.dtype), s[:rank].to(matrix.dtype), vh[:rank].to(matrix.dtype)


@pytest.mark.parametrize("shape", [(96, 40), (40, 96), (64, 64)])
def test_gram_svd_reconstructs_and_is_orthonormal(shape):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    u, s, vh = spectral.gram_svd(a)
    reference = torch.linalg.svdvals(a.double())
    assert torch.allclose(s.double(), reference, rtol=1e-6, atol=1e-6 * float(reference[0]))
    assert torch.allclose((u * s) @ vh, a, atol=1e-5)
    eye = torch.eye(min(shape))
    assert torch.allclose(u.mT @ u, eye, atol=1e-5) and torch.allclose(vh @ vh.mT, eye, atol=1e-5)


@pytest.mark.parametrize("shape", [(96, 40), (40, 96)])
def test_gram_svd_of_a_given_rank_is_the_eckart_young_truncation(shape):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    u, s, vh = spectral.gram_svd(a, 7)
    assert (u.shape, s.shape, vh.shape) == ((shape[0], 7), (7,), (7, shape[1]))
    ru, rs, rvh = lapack_svd(a, 7)
    torch.testing.assert_close((u * s) @ vh, (ru * rs) @ rvh, atol=1e-5, rtol=0)
    torch.testing.assert_close(u.mT @ u, torch.eye(7), atol=1e-5, rtol=0)


def test_top_singular_drops_the_null_space_of_a_rank_deficient_matrix():
    """Rank 4: triplets 5.. are numerically null, so top_singular zeroes them (vectors included)."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(30, 4, generator=g) @ torch.randn(4, 20, generator=g)
    u, s, vh = spectral.top_singular(a, 10)
    assert torch.allclose((u * s) @ vh, a, atol=1e-4)
    assert torch.all(s[4:] == 0) and torch.all(u[:, 4:] == 0) and torch.all(vh[4:] == 0)
    assert torch.all(s[:4] > 0)


CASES = [
    ("tsv_m", {}),
    ("tsv_m", {"orthogonaliser": "newton_schulz"}),
    ("boosted_tsv_m", {"orthogonaliser": "svd"}),
    ("iso_c", {}),
    ("iso_cts", {}),
    ("lors_svp", {"rank_fraction": 0.25}),
    ("lors", {"rank_fraction": 0.25}),
]


@pytest.mark.parametrize(("method", "params"), CASES)
@pytest.mark.parametrize("experts", [3, 5])
def test_exact_merge_agrees_with_the_lapack_svd(monkeypatch, method, params, experts):
    """Full-rank random task matrices (48 × 80): max |gram − lapack| ≤ 1e-4 · max |τ|."""
    tasks = 1e-3 * torch.randn(experts, 48, 80, generator=torch.Generator().manual_seed(experts))
    merged = call_method(method, tasks, **params)
    monkeypatch.setattr(spectral, "gram_svd", lapack_svd)
    monkeypatch.setattr(subspace, "gram_svd", lapack_svd)  # Iso-C's own import
    reference = call_method(method, tasks, **params)
    assert float((merged - reference).abs().max()) <= 1e-4 * float(tasks.abs().max())
