"""Exact subspace merges with the Gram-eigendecomposition SVD (spectral.gram_svd) against the
LAPACK SVD it replaced (torch.linalg.svd, float32), on one Whisper-small-shaped task stack
per matrix shape, in the same process, alternating, medians:

    python benchmarks/bench_gram_svd.py --experts 3 --repeats 3 --threads 2

`--threads-check` instead times LAPACK's float64 eigh of Gram matrices (the core of gram_svd)
on one thread against `--threads` threads, alternating, median and max of `--repeats`:

    python benchmarks/bench_gram_svd.py --threads-check --repeats 7 --threads 2

`--lors-swaps` explains LoRS's difference between the two SVDs: per task of the 3072 × 768
stack, the residual entries τ − L_r that one SVD keeps in the top-ρ and the other drops, their
|residual| / threshold under each, and the difference on the entries both keep or both drop:

    python benchmarks/bench_gram_svd.py --lors-swaps --experts 3
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


def lapack_svd(matrix: torch.Tensor, rank: int | None = None):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def threads_check(threads: int, repeats: int) -> None:
    """eigh of n × n float64 Gram matrices on 1 thread and on `threads`, alternating."""
    print(f"| n | 1 thread: median (max) s | {threads} threads: median (max) s | ratio of medians |")
    print("|---|---|---|---|")
    load_before = os.getloadavg()[0]
    for n in (128, 512, 768, 1280):
        a = torch.randn(2 * n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        gram = a.mT @ a
        times = {1: [], threads: []}
        for _ in range(repeats):
            for count in (1, threads):
                torch.set_num_threads(count)
                start = time.perf_counter()
                torch.linalg.eigh(gram)
                times[count].append(time.perf_counter() - start)
        one, many = (statistics.median(times[c]) for c in (1, threads))
        print(f"| {n} | {one:.3f} ({max(times[1]):.3f}) | {many:.3f} ({max(times[threads]):.3f}) | {many / one:.1f} |")
    print(f"\nload average before {load_before:.1f}, after {os.getloadavg()[0]:.1f}")


def lors_swaps(experts: int) -> None:
    """LoRS's low-rank part by both SVDs, and where their top-ρ masks of the residual differ."""
    from speechmerge.merging.masks import kept_count, kth_largest_magnitude
    from speechmerge.merging.methods.lors import lors_rank

    tasks = 2e-4 * torch.randn(experts, 3072, 768, generator=torch.Generator().manual_seed(0))
    print(
        "| task | entries kept by one SVD only | their \\|R\\| / threshold (Gram; LAPACK) | max diff elsewhere / max τ |"
    )
    print("|---|---|---|---|")
    for t, tau in enumerate(tasks):
        rank = lors_rank(tau, None, 0.01)
        masks, results = [], []
        for svd in (spectral.gram_svd, lapack_svd):
            u, s, vh = svd(tau, rank)
            low = (u * s) @ vh
            residual = tau - low
            threshold = kth_largest_magnitude(residual.clone(), kept_count(residual.numel(), 0.2))
            masks.append((residual.abs() >= threshold, residual.abs() / threshold))
            results.append(low + residual * masks[-1][0])
        differ = masks[0][0] != masks[1][0]
        ratios = "; ".join(", ".join(f"{float(x):.7f}" for x in m[1][differ]) for m in masks)
        elsewhere = float((results[0] - results[1]).abs()[~differ].max() / tau.abs().max())
        print(f"| {t} | {int(differ.sum())} of {differ.numel()} | {ratios or '-'} | {elsewhere:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threads-check", action="store_true", help="time eigh on 1 thread against --threads")
    parser.add_argument("--lors-swaps", action="store_true", help="where LoRS's masks differ between the two SVDs")
    args = parser.parse_args()
    if args.lors_swaps:
        lors_swaps(args.experts)
        return
    if args.threads_check:
        threads_check(args.threads, args.repeats)
        return
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
