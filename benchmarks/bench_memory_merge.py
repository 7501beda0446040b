"""Time in-memory merges of whisper-base's decoder with 4 synthetic experts (base + small random
decoder deltas): opening the merger once, then task arithmetic and TSV-M per call, first and
repeated. Run: PYTHONPATH=. python benchmarks/bench_memory_merge.py [--repeats 3]"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def synthetic_experts(root: Path, experts: int) -> tuple[Path, list[Path]]:
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.builtin import builtin_model_dir

    base_dir = builtin_model_dir("whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(base_dir)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    dirs = []
    for index in range(experts):
        generator = torch.Generator().manual_seed(index + 1)
        state = {
            k: v + 1e-3 * torch.randn(v.shape, generator=generator) if k.startswith("model.decoder.") else v
            for k, v in base_state.items()
        }
        model.load_state_dict(state)
        model.save_pretrained(root / f"expert{index}")
        dirs.append(root / f"expert{index}")
    return base_dir, dirs


def main() -> None:
    from speechmerge.merging.memory import MemoryMerger
    from speechmerge.recipe import parse_recipe

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="task_arithmetic,tsv_m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, experts = synthetic_experts(Path(tmp), 4)
        settings = {"task_arithmetic": {"scale": 0.3}, "tsv_m": {}}
        for method in args.methods.split(","):
            params = settings.get(method, {})
            recipe = parse_recipe(
                {
                    "base": str(base),
                    "experts": [str(e) for e in experts],
                    "method": method,
                    "params": params,
                    "device": "cpu",
                },
                where="bench",
            )
            start = time.perf_counter()
            merger = MemoryMerger(recipe, include=r"model\.decoder\..*")
            opened = time.perf_counter() - start
            times = []
            for _ in range(1 + args.repeats):
                start = time.perf_counter()
                merger.merge(recipe)
                times.append(time.perf_counter() - start)
            print(
                f"{method}: open {opened:.2f} s, first call {times[0]:.2f} s, repeated median "
                f"{statistics.median(times[1:]):.2f} s ({len(merger.names)} tensors)",
                flush=True,
            )
            del merger
    print("load", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
