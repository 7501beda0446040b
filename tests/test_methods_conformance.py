"""The contract every registered merge method keeps, checked over `all_methods()`: a method is
tested by being registered.

- entry-wise (blockwise) methods give the same result whole and in row blocks, with their
  statistics gathered over the blocks first, as the engine streams a large tensor;
- identical experts merge to that expert, or to the base, where the declaration says so
  (`identical_experts`, a property of the method's definition);
- all-zero task vectors (every expert equal to the base) merge to the base;
- ill-conditioned inputs (identical, opposite, rank-one, tiny, huge) give finite outputs.

Inputs are small (3 × 12 × 10) and, for the block check, exactly representable multiples of
2^-8 with distinct magnitudes per task: sums, products and selections on them do not depend on
the order of a reduction, so no comparison depends on the last bit of a kernel. Every method runs
through the engine's own step (`engine.apply_method`) with each choice of its declared options.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from method_calls import tensor_context, with_synthetic_data

from speechmerge.errors import SpeechmergeError
from speechmerge.merging.engine import apply_method, gather_statistics
from speechmerge.merging.registry import MergeMethod, Param, all_methods, get_method, merge_method

EXPERTS, ROWS, COLUMNS = 3, 12, 10
BLOCKS = [(0, 5), (5, 9), (9, 12)]
CONTEXTS = {
    "matrix": tensor_context("model.encoder.layers.0.fc1.weight", "mlp", is_matrix=True, seed=3),
    "embedding": tensor_context("model.decoder.embed_tokens.weight", "embedding", is_matrix=False, seed=3),
}


def variants(method: MergeMethod) -> list[dict]:
    """The defaults, and each other value of every option (a Param with choices)."""
    out = [method.defaults()]
    for p in method.params:
        out += [{**method.defaults(), p.name: c} for c in p.choices or () if c != p.default]
    return out


CASES = [
    pytest.param(m.name, params, id=f"{m.name}-{'-'.join(str(v) for v in params.values() if isinstance(v, str))}")
    for m in all_methods()
    for params in variants(m)
]


def grid_tasks(seed: int = 0) -> torch.Tensor:
    """[T, rows, columns] of ±k/256, k a permutation of 1..rows·columns per task."""
    g = torch.Generator().manual_seed(seed)
    n = ROWS * COLUMNS
    magnitudes = torch.stack([torch.randperm(n, generator=g) + 1.0 for _ in range(EXPERTS)]) / 256
    signs = torch.where(torch.rand(EXPERTS, n, generator=g) < 0.5, -1.0, 1.0)
    return (magnitudes * signs).reshape(EXPERTS, ROWS, COLUMNS)


def inputs(method: MergeMethod, tasks: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """What the method is handed: task vectors, or whole weights θ_0 + τ_t."""
    return tasks.clone() if method.space == "deltas" else base + tasks


def merged_weights(method, tasks, base, ctx, params, whole=True) -> torch.Tensor:
    """θ from one engine step: whole-model statistics over this tensor, then `apply_method`."""
    ctx = with_synthetic_data(method, ctx, tasks.shape[0], tuple(base.shape))
    handed = inputs(method, tasks, base)
    stats = gather_statistics(method.statistics, tasks.shape[0], ctx, params, lambda: [(0, handed)])
    out = apply_method(method, handed, base, torch.ones(tasks.shape[0]), replace(ctx, stats=stats), params, whole)
    return out + base if method.space == "deltas" else out


def merged_in_blocks(method, tasks, base, ctx, params) -> torch.Tensor:
    """θ with the tensor streamed in row blocks: statistics over every block, then each block."""
    ctx = with_synthetic_data(method, ctx, tasks.shape[0], tuple(base.shape))
    handed = inputs(method, tasks, base)
    stats = gather_statistics(method.statistics, tasks.shape[0], ctx, params, lambda: [(0, handed)])
    ctx = replace(ctx, stats=stats)
    blocks = [(start, handed[:, start:stop]) for start, stop in BLOCKS]
    tensor_stats = gather_statistics(method.tensor_statistics, tasks.shape[0], ctx, params, lambda: blocks)
    pieces = []
    for start, block in blocks:
        block_ctx = replace(ctx, tensor_stats=tensor_stats, row_offset=start)
        out = apply_method(method, block.clone(), base[start:], torch.ones(EXPERTS), block_ctx, params, whole=False)
        rows = out.shape[0]
        pieces.append(out + base[start : start + rows] if method.space == "deltas" else out)
    return torch.cat(pieces)


def base_tensor(seed: int = 1) -> torch.Tensor:
    return torch.randint(-64, 64, (ROWS, COLUMNS), generator=torch.Generator().manual_seed(seed)) / 64.0


@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("name,params", CASES)
def test_blockwise_methods_give_the_same_result_in_row_blocks(name, params, context):
    method, ctx = get_method(name), CONTEXTS[context]
    if not method.is_blockwise(ctx, params):
        pytest.skip(f"{name} is not entry-wise for a {context} tensor")
    tasks, base = grid_tasks(), base_tensor()
    whole = merged_weights(method, tasks, base, ctx, params)
    blocks = merged_in_blocks(method, tasks, base, ctx, params)
    torch.testing.assert_close(blocks, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("name", [m.name for m in all_methods()])
def test_identical_experts_merge_as_declared(name, context):
    method, ctx = get_method(name), CONTEXTS[context]
    if method.identical_experts is None:
        pytest.skip(f"{name} declares no closed form for identical experts")
    params = method.validate(method.identical_experts.params, "test")
    tau, base = grid_tasks()[0], base_tensor()
    merged = merged_weights(method, torch.stack([tau] * EXPERTS), base, ctx, params)
    expected = base + tau if method.identical_experts.gives == "expert" else base
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("name,params", CASES)
def test_all_zero_task_vectors_give_the_base(name, params, context):
    method, ctx = get_method(name), CONTEXTS[context]
    base = base_tensor()
    merged = merged_weights(method, torch.zeros(EXPERTS, ROWS, COLUMNS), base, ctx, params)
    torch.testing.assert_close(merged, base, rtol=1e-6, atol=1e-7)


def ill_conditioned() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    tau = torch.randn(ROWS, COLUMNS, generator=g) * 1e-3
    rank_one = torch.outer(torch.randn(ROWS, generator=g), torch.randn(COLUMNS, generator=g)) * 1e-3
    return {
        "identical": torch.stack([tau] * EXPERTS),
        "near identical": torch.stack([tau, tau * (1 + 1e-7), tau + 1e-12]),
        "opposite": torch.stack([tau, -tau, tau]),
        "rank one": torch.stack([rank_one, 2 * rank_one, -rank_one]),
        "one all-zero": torch.stack([tau, torch.zeros_like(tau), tau.flip(0)]),
        "tiny": torch.stack([tau, tau.flip(1), -tau]) * 1e-30,
        "huge": torch.stack([tau, tau.flip(1), -tau]) * 1e7,
    }


@pytest.mark.parametrize("case", list(ill_conditioned()))
@pytest.mark.parametrize("name,params", CASES)
def test_ill_conditioned_inputs_give_finite_bounded_outputs(name, params, case):
    method, tasks, base = get_method(name), ill_conditioned()[case], base_tensor()
    merged = merged_weights(method, tasks, base, CONTEXTS["matrix"], params)
    assert torch.isfinite(merged).all()
    largest = float(tasks.abs().sum(0).max()) + (float(base.abs().max()) if method.space == "weights" else 0.0)
    assert float((merged - base).abs().max()) <= 10 * largest + 1e-6  # nothing blows up


# --- the declaration checks itself ---------------------------------------------------------


def test_a_declared_parameter_missing_from_the_function_fails_at_registration():
    with pytest.raises(TypeError, match="'densty'"):

        @merge_method(
            name="contract_probe",
            title="t",
            family="task vectors",
            space="deltas",
            source="s",
            variant="v",
            params=[Param("densty", float, 0.5, "typo")],
        )
        def probe(tasks, base, weights, ctx, *, density):
            return tasks.sum(0)

    assert "contract_probe" not in {m.name for m in all_methods()}


def test_a_keyword_parameter_not_declared_fails_at_registration():
    with pytest.raises(TypeError, match="'scale'.*not declared"):

        @merge_method(name="contract_probe", title="t", family="task vectors", space="deltas", source="s", variant="v")
        def probe(tasks, base, weights, ctx, *, scale):
            return tasks.sum(0)


def test_a_cross_parameter_rule_is_checked_when_the_recipe_is_validated():
    with pytest.raises(SpeechmergeError, match=r"^r\.yaml: overrides\[0\]\.params: della: .*window"):
        get_method("della").validate({"drop": 0.1, "window": 0.5}, "r.yaml", prefix="overrides[0].params.")
    assert get_method("della").validate({"drop": 0.3, "window": 0.14}, "r.yaml")["window"] == 0.14
