"""Reading a merge's inputs tensor by tensor into fresh buffers against one reused buffer (why
the merge engine's reader takes its buffers from `merging.buffers.BufferPool`).

    python benchmarks/bench_reads.py /tmp/speechmerge-scale/small-float32 --repeats 2

The folder holds `base` and `expert*` Hugging Face checkpoints (bench_scale.py writes them).
With the engine's allocator setting (every ≥ 1 MiB allocation its own mapping), each fresh
buffer's pages are faulted in on first write. Prints seconds per pass over every tensor of
every checkpoint, with and without the finite check the engine does, alternating the two ways.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from speechmerge.checkpoints.hf import HFCheckpoint
    from speechmerge.merging.engine import all_finite, return_freed_memory_promptly

    torch.set_num_threads(args.threads)
    return_freed_memory_promptly()
    folders = [args.folder / "base", *sorted(args.folder.glob("expert*"))]
    checkpoints = [HFCheckpoint(folder) for folder in folders]
    first = checkpoints[0]
    shapes = {name: first._safe_header(first._file_of[name])[name][0] for name in first._file_of}
    reused = torch.empty(max(torch.Size(shape).numel() for shape in shapes.values()))

    def read_all(fresh: bool, check: bool) -> float:
        start = time.perf_counter()
        for name, shape in shapes.items():
            for checkpoint in checkpoints:
                out = torch.empty(shape) if fresh else reused[: torch.Size(shape).numel()].view(shape)
                checkpoint.read_into(name, out)
                if check:
                    all_finite(out)
        return time.perf_counter() - start

    read_all(False, False)  # page cache warm
    print(f"{len(checkpoints)} checkpoints, {len(shapes)} tensors each, {args.threads} threads")
    print("| buffers | read (s) | read + finite check (s) |\n|---|---|---|")
    for _ in range(args.repeats):
        for fresh in (True, False):
            print(f"| {'fresh' if fresh else 'reused'} | {read_all(fresh, False):.2f} | {read_all(fresh, True):.2f} |")


if __name__ == "__main__":
    main()
