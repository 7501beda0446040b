"""Streaming a large tensor in row blocks changes nothing but memory, for every registered method
and each choice of its options: the engine's own split (statistics passes over the blocks as
steps, then each block) against the same merge with room for the whole tensor.

The family's weights are exactly representable multiples of 2^-20 and each expert's task-vector
magnitudes are distinct, so selections (top-k cuts, sign elections, ranks) have no ties and sums
of task vectors are exact: the comparison does not depend on the last bit of a kernel; statistics
summed in another order (Gram matrices, softmax normalisers) agree to float32 rounding."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state, save_whisper, tiny_config
from test_methods_conformance import CASES

from speechmerge.merging.api import merge
from speechmerge.merging.registry import get_method
from speechmerge.recipe import parse_recipe

SPLIT = "model.decoder.embed_tokens.weight"
GRID = 2.0**-20


@pytest.fixture(scope="module")
def grid_family(tmp_path_factory):
    """A tiny Whisper base and 3 experts on the 2^-20 grid (see the module docstring)."""
    from transformers import WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("grid")
    g = torch.Generator().manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_config()).eval()
    base = {n: torch.randint(-(2**15), 2**15, t.shape, generator=g) * GRID for n, t in model.state_dict().items()}
    model.load_state_dict(base)
    dirs = [save_whisper(model, root / "base")]
    for index in range(3):
        state = {}
        for name, tensor in base.items():
            magnitudes = (torch.randperm(tensor.numel(), generator=g) + 1).reshape(tensor.shape) * GRID / 8
            signs = torch.where(torch.rand(tensor.shape, generator=g) < 0.5, -1.0, 1.0)
            state[name] = tensor + signs * magnitudes * (index + 1)
        model.load_state_dict(state)
        dirs.append(save_whisper(model, root / f"expert{index}"))
    return dirs[0], dirs[1:]


def merged(tmp_path, family, method: str, params: dict, budget: str):
    base, experts = family
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": method,
            "params": params,
            "output": str(tmp_path / budget),
            "memory_budget": budget,
            "seed": 5,
        }
    )
    out, report = merge(recipe, show_progress=False)
    return load_state(out), report


# Data-aware methods need real experts with data: their row blocks are checked by the conformance
# suite on synthetic statistics, and end to end in test_merge_data_aware.py.
WEIGHT_ONLY = [case for case in CASES if not get_method(case.values[0]).needs]


@pytest.mark.parametrize("name,params", WEIGHT_ONLY)
def test_row_blocks_give_the_whole_tensor_result(tmp_path, grid_family, name, params):
    whole, whole_report = merged(tmp_path, grid_family, name, params, "1GB")
    blocks, block_report = merged(tmp_path, grid_family, name, params, "4MB")
    assert whole_report.split == [] and block_report.split == [SPLIT]
    for tensor_name, tensor in whole.items():
        torch.testing.assert_close(
            blocks[tensor_name], tensor, rtol=1e-5, atol=1e-6, msg=lambda text, name=tensor_name: f"{name}: {text}"
        )
