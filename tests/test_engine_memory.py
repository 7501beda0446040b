"""The engine's memory is bounded by its plan, not by the size of the models.

A family whose full load (base + 8 experts) is several times the bound is merged in a child
process while this process samples the child's resident anonymous memory (RssAnon, which
excludes memory-mapped input pages) from /proc; the peak above the child's baseline must stay
under the memory budget plus a little slack for chunked temporaries. The budget is set to
(experts + 2) × the largest tensor in float32 — the design's bound, with the largest tensor
then streamed in two row blocks — to half of it, and to twice it (whole tensors, each read
ahead while the previous one is merged).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_family

from speechmerge.merging.masks import CHUNK

EXPERTS = 8
BIG = dict(d_model=32, encoder_layers=24, decoder_layers=24, encoder_ffn_dim=4096, decoder_ffn_dim=4096)
SLACK = 10 * CHUNK * 4  # the methods' chunked temporaries: a few float32 chunks at a time

CHILD = r"""
import json, sys
from speechmerge.recipe import parse_recipe
from speechmerge.merging.api import merge
from speechmerge.merging.plan import build_plan
from speechmerge.sysinfo import anonymous_memory_bytes
recipe = parse_recipe(json.loads(sys.argv[1]))
build_plan(recipe)  # imports, architecture check and layout caches: part of the baseline
print(anonymous_memory_bytes(), flush=True)
sys.stdin.readline()
merge(recipe, show_progress=False)
"""


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def big_family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("big"), experts=EXPERTS, config_changes=BIG, seed=7)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "method,params,fraction",
    [("task_arithmetic", {}, 2.0), ("ties", {"density": 0.2}, 1.0), ("dare", {"drop": 0.5}, 0.5)],
)
def test_peak_memory_stays_under_the_plan_bound(tmp_path, big_family, method, params, fraction):
    base, experts = big_family
    largest = 51865 * BIG["d_model"] * 4
    budget = int(fraction * (EXPERTS + 2) * largest)
    recipe = {
        "base": str(base),
        "experts": [str(e) for e in experts],
        "method": method,
        "params": params,
        "output": str(tmp_path / "out"),
        "device": "cpu",
        "memory_budget": str(budget),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(recipe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    baseline = int(child.stdout.readline())
    peak = rss_anon(child.pid)
    child.stdin.write("go\n")
    child.stdin.flush()
    while child.poll() is None:
        try:
            peak = max(peak, rss_anon(child.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.0005)
    assert child.wait() == 0
    bound = budget + SLACK
    full_load = sum(f.stat().st_size for d in [base, *experts] for f in Path(d).glob("*.safetensors"))
    assert full_load > 3 * bound
    assert peak - baseline < bound, (
        f"peak {(peak - baseline) / 2**20:.0f} MiB above baseline, bound {bound / 2**20:.0f} MiB"
    )
    record = json.loads((tmp_path / "out" / "speechmerge_merge.json").read_text())
    assert record["memory"]["budget_bytes"] == budget
    assert ("model.decoder.embed_tokens.weight" in record["tensors_streamed_in_row_blocks"]) == (fraction <= 1)
