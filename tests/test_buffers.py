"""The reader's buffer pool: buffers are reused best-fit, the pool never holds more than its
limit beyond what is handed out, and a buffer the merged output still views is not reused
before that output is written."""

from __future__ import annotations

import time

import torch
from conftest import load_state

from speechmerge.checkpoints.writer import StreamingSafetensorsWriter
from speechmerge.merging.api import merge
from speechmerge.merging.buffers import BufferPool
from speechmerge.recipe import parse_recipe

FLOAT = 4


def test_a_given_back_buffer_is_reused_best_fit():
    pool = BufferPool(torch.float32, torch.device("cpu"), limit=1 << 20)
    _, small = pool.take((10,))
    _, large = pool.take((100,))
    pool.give_back([large, small])
    view, buffer = pool.take((8,))
    assert buffer.data_ptr() == small.data_ptr() and view.shape == (8,)
    view, buffer = pool.take((2, 30))
    assert buffer.data_ptr() == large.data_ptr() and view.shape == (2, 30)
    assert pool.allocated == 110 * FLOAT


def test_the_pool_frees_idle_buffers_beyond_its_limit_smallest_first():
    pool = BufferPool(torch.float32, torch.device("cpu"), limit=200 * FLOAT)
    ten, forty, hundred = (pool.take((n,))[1] for n in (10, 40, 100))
    pool.give_back([ten, forty])
    assert pool.allocated == 150 * FLOAT and pool.idle_bytes() == 50 * FLOAT
    _, sixty = pool.take((60,))  # fits nothing idle; 210 > 200, so the idle 10 is freed, not the 40
    assert pool.allocated == 200 * FLOAT and pool.idle_bytes() == 40 * FLOAT
    _, extra = pool.take((50,))  # the idle 40 is freed, and it is still over: handed out anyway
    assert pool.allocated == 210 * FLOAT and pool.idle_bytes() == 0
    pool.give_back([hundred, sixty, extra])  # the smallest, 50, is freed to come back within it
    assert pool.allocated == 160 * FLOAT and pool.idle_bytes() == 160 * FLOAT


def test_buffers_the_output_views_wait_for_its_write(tmp_path, monkeypatch, family):
    """Experts equal to the base: every merged tensor is the base's buffer itself. With every
    write delayed, the reader has read ahead into the pool long before each write; the output
    is still the base, bit for bit (a buffer reused before its write would hold the next
    tensor's values)."""
    base, _ = family
    write = StreamingSafetensorsWriter.write

    def slow_write(self, name, tensor):
        time.sleep(0.002)
        write(self, name, tensor)

    monkeypatch.setattr(StreamingSafetensorsWriter, "write", slow_write)
    out = tmp_path / "merged"
    recipe = {"base": str(base), "experts": [str(base), str(base)], "method": "task_arithmetic", "output": str(out)}
    merge(parse_recipe(recipe), show_progress=False)
    merged, reference = load_state(out), load_state(base)
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged[name], reference[name]) for name in reference)
