"""Exact subspace merges with the Gram-eigendecomposition SVD (spectral.gram_svd) against the
LAPACK SVD it replaced (torch.linalg.svd, float32), on one Whisper-small-shaped task stack
per matrix shape, in the same process, alternating, medians:

    python benchmarks/bench_gram_svd.py --experts 3 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from speechmerge.merging import spectral  # noqa: E402
from speechmerge.merging.methods import subspace  # noqa: E402
from tests.method_calls import call_method  # noqa: E402

METHODS = {"tsv_m": {}, "iso_cts": {}, "boosted_tsv_m": {"orthogonaliser": "svd"}, "lors": {}, "iso_c": {}}


def lapack_svd(matrix: torch.Tensor):
    return torch.linalg.svd(matrix, full_matrices=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gram = spectral.gram_svd
    loads = []
    print("| method | shape | LAPACK SVD (s) | Gram eigh (s) | ratio | max diff / max τ |")
    print("|---|---|---|---|---|---|")
    for shape in [(768, 768), (3072, 768)]:
        tasks = 2e-4 * torch.randn(args.experts, *shape, generator=torch.Generator().manual_seed(0))
        for method, params in METHODS.items():
            times = {"lapack": [], "gram": []}
            results = {}
            for _ in range(args.repeats):
                for label, svd in (("lapack", lapack_svd), ("gram", gram)):
                    spectral.gram_svd = subspace.gram_svd = svd
                    start = time.perf_counter()
                    results[label] = call_method(method, tasks, **params)
                    times[label].append(time.perf_counter() - start)
                    loads.append(os.getloadavg()[0])
            spectral.gram_svd = subspace.gram_svd = gram
            old, new = statistics.median(times["lapack"]), statistics.median(times["gram"])
            diff = float((results["gram"] - results["lapack"]).abs().max() / tasks.abs().max())
            print(f"| {method} | {shape[0]}×{shape[1]} | {old:.2f} | {new:.2f} | {new / old:.2f} | {diff:.1e} |")
    print(f"\n{args.experts} experts, {args.threads} threads, load average median {statistics.median(loads):.1f}")


if __name__ == "__main__":
    main()
