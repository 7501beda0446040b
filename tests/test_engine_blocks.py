"""Streaming a large tensor in row blocks changes nothing but memory: results are
bit-identical to merging it whole, for every method that declares itself entry-wise."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state

from speechmerge.merging.api import merge
from speechmerge.recipe import parse_recipe

CASES = [
    ("soup", {}),
    ("task_arithmetic", {"scale": 0.6}),
    ("ties", {"density": 0.3}),
    ("ties", {"density": 0.3, "topk": "per_tensor"}),
    ("dare", {"drop": 0.6}),
    ("dare", {"drop": 0.6, "combine": "ties"}),
    ("lors_mp", {"density": 0.3}),
    ("lors", {}),
]


@pytest.mark.parametrize("method,params", CASES, ids=[f"{m}-{'-'.join(map(str, p.values()))}" for m, p in CASES])
def test_row_blocks_equal_whole_tensors(tmp_path, family, method, params):
    base, experts = family
    outputs, reports = [], []
    for budget in ("1GB", "200KB"):
        recipe = parse_recipe({"base": str(base), "experts": [str(e) for e in experts], "method": method,
                               "params": params, "output": str(tmp_path / budget), "memory_budget": budget, "seed": 11})
        out, report = merge(recipe, show_progress=False)
        outputs.append(load_state(out))
        reports.append(report)
    assert reports[0].split == []
    assert "model.decoder.embed_tokens.weight" in reports[1].split
    for name, tensor in outputs[0].items():
        assert torch.equal(tensor, outputs[1][name]), name
