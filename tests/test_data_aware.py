"""RegMean and Fisher merging as tensor functions, against closed forms computed in the tests."""

from __future__ import annotations

import pytest
import torch

from speechmerge.errors import SpeechmergeError
from speechmerge.merging.data_aware import average, fisher_merge, regmean, shrink_off_diagonal


def _experts(count=3, out=5, inputs=4, rows=(9, 7, 12), seed=0):
    """Experts' weights [T, out, in] and their layer inputs X_t [N_t, in] (float64)."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(count, out, inputs, generator=generator, dtype=torch.float64)
    xs = [torch.randn(n, inputs, generator=generator, dtype=torch.float64) for n in rows[:count]]
    return weights, xs


def test_regmean_is_the_least_squares_solution_of_the_stacked_regression():
    """α = 1: W minimises Σ_t ‖X_t Wᵀ − X_t W_tᵀ‖², i.e. Wᵀ = lstsq([X_1; …; X_T], [X_1 W_1ᵀ; …; X_T W_Tᵀ])."""
    weights, xs = _experts()
    stacked = torch.cat(xs)
    targets = torch.cat([x @ w.T for x, w in zip(xs, weights)])
    expected = torch.linalg.lstsq(stacked, targets).solution.T
    grams = torch.stack([x.T @ x for x in xs])
    merged = regmean(weights, grams, alpha=1.0)
    assert merged.shape == weights.shape[1:]
    torch.testing.assert_close(merged, expected, rtol=1e-9, atol=1e-10)


def test_regmean_with_identical_grams_is_the_plain_average():
    weights, xs = _experts()
    gram = xs[0].T @ xs[0]
    merged = regmean(weights, torch.stack([gram] * 3), alpha=0.7)
    torch.testing.assert_close(merged, weights.mean(0), rtol=1e-9, atol=1e-10)


def test_regmean_alpha_zero_is_a_per_input_feature_weighted_average():
    """α = 0 keeps only diag(G_t) = g_t (g_ti = Σ_rows x_i²), so Σ_t diag(g_t) Wᵀ = Σ_t diag(g_t) W_tᵀ
    separates by input feature i: W[:, i] = Σ_t g_ti W_t[:, i] / Σ_t g_ti."""
    weights, xs = _experts()
    g = torch.stack([(x**2).sum(0) for x in xs])  # [T, in]
    expected = (g[:, None, :] * weights).sum(0) / g.sum(0)[None, :]
    merged = regmean(weights, torch.stack([x.T @ x for x in xs]), alpha=0.0)
    torch.testing.assert_close(merged, expected, rtol=1e-9, atol=1e-10)


def test_shrink_scales_only_off_diagonal_entries():
    grams = torch.arange(18, dtype=torch.float64).reshape(2, 3, 3)
    shrunk = shrink_off_diagonal(grams, 0.25)
    off = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(shrunk[:, off], 0.25 * grams[:, off])
    torch.testing.assert_close(torch.diagonal(shrunk, dim1=1, dim2=2), torch.diagonal(grams, dim1=1, dim2=2))


def test_regmean_keeps_the_weights_dtype_and_solves_in_float64():
    weights, xs = _experts()
    grams = torch.stack([x.T @ x for x in xs])
    merged = regmean(weights.float(), grams.float(), alpha=1.0)
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged.double(), regmean(weights, grams, alpha=1.0), rtol=1e-4, atol=1e-5)


def test_singular_system_without_ridge_is_one_clear_line_and_ridge_solves_it():
    weights, xs = _experts()
    for x in xs:
        x[:, 2] = 0.0  # input feature 2 never varies: Σ G is singular
    grams = torch.stack([x.T @ x for x in xs])
    with pytest.raises(SpeechmergeError) as error:
        regmean(weights, grams, alpha=1.0, name="model.decoder.layers.0.fc1.weight")
    message = str(error.value)
    assert "\n" not in message and "model.decoder.layers.0.fc1.weight" in message and "ridge" in message
    merged = regmean(weights, grams, alpha=1.0, ridge=1e-6)
    assert torch.isfinite(merged).all()
    # The other columns still solve the regression on the features that vary.
    keep = [0, 1, 3]
    stacked = torch.cat([x[:, keep] for x in xs])
    targets = torch.cat([x @ w.T for x, w in zip(xs, weights)])
    expected = torch.linalg.lstsq(stacked, targets).solution.T
    torch.testing.assert_close(merged[:, keep], expected, rtol=1e-4, atol=1e-5)


def test_regmean_refuses_alpha_outside_the_unit_interval_and_mismatched_shapes():
    weights, xs = _experts()
    grams = torch.stack([x.T @ x for x in xs])
    with pytest.raises(SpeechmergeError, match="alpha"):
        regmean(weights, grams, alpha=1.5)
    with pytest.raises(SpeechmergeError, match=r"\[T, in, in\]"):
        regmean(weights, grams[:, :3, :3])


def test_average_is_the_mean_over_experts():
    params = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(average(params), params.mean(0))


def test_fisher_merge_with_equal_fishers_is_the_lambda_weighted_average():
    generator = torch.Generator().manual_seed(2)
    params = torch.randn(3, 6, 4, generator=generator, dtype=torch.float64)
    fisher = torch.rand(6, 4, generator=generator, dtype=torch.float64) + 0.1
    lambdas = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    merged = fisher_merge(params, torch.stack([fisher] * 3), lambdas)
    torch.testing.assert_close(merged, (lambdas[:, None, None] * params).sum(0) / lambdas.sum())


def test_fisher_merge_takes_the_others_value_where_one_experts_fisher_is_zero():
    generator = torch.Generator().manual_seed(3)
    params = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    fishers = torch.rand(3, 5, generator=generator, dtype=torch.float64) + 0.5
    fishers[0, 2] = 0.0
    merged = fisher_merge(params, fishers, eps=1e-12)
    others = (fishers[1:, 2] * params[1:, 2]).sum() / fishers[1:, 2].sum()
    torch.testing.assert_close(merged[2], others, rtol=1e-10, atol=1e-10)
    two = fisher_merge(params[:2], fishers[:2], eps=1e-12)
    torch.testing.assert_close(two[2], params[1, 2], rtol=1e-10, atol=1e-10)


def test_fisher_merge_where_no_expert_has_fisher_is_the_lambda_average():
    params = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    merged = fisher_merge(params, torch.zeros(2, 1, dtype=torch.float64), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(merged, torch.tensor([1.5], dtype=torch.float64))


def test_fisher_merge_bad_lambdas_and_shapes():
    params = torch.zeros(2, 3)
    with pytest.raises(SpeechmergeError, match="lambdas"):
        fisher_merge(params, torch.ones(2, 3), torch.tensor([1.0, -1.0]))
    with pytest.raises(SpeechmergeError, match="differ in shape"):
        fisher_merge(params, torch.ones(3, 3))


def test_a_feature_of_tiny_scale_is_not_singular():
    """Whether Σ G is singular does not depend on the features' units (a GELU feature that is
    nearly always off has a tiny diagonal entry but is not collinear with the others)."""
    weights, xs = _experts()
    for x in xs:
        x[:, 1] *= 1e-9
    stacked = torch.cat(xs)
    targets = torch.cat([x @ w.T for x, w in zip(xs, weights)])
    expected = torch.linalg.lstsq(stacked, targets).solution.T
    merged = regmean(weights, torch.stack([x.T @ x for x in xs]), alpha=1.0)
    torch.testing.assert_close(merged @ stacked.T, expected @ stacked.T, rtol=1e-8, atol=1e-9)


def test_fewer_rows_than_features_is_singular_at_alpha_one_only():
    weights, xs = _experts(inputs=6, rows=(2, 2, 1))  # 5 rows for 6 features
    grams = torch.stack([x.T @ x for x in xs])
    with pytest.raises(SpeechmergeError, match="singular"):
        regmean(weights, grams, alpha=1.0)
    assert torch.isfinite(regmean(weights, grams, alpha=0.5)).all()  # the diagonal part makes it definite
