"""Cost of the data-aware merges on whisper-base decoder experts: statistics per expert, then the merge.

Experts are whisper-base with Gaussian noise (1% of each tensor's standard deviation) on every
decoder tensor, so the encoder is the base's and the statistics are decoder-only (what a
frozen-encoder expert gets). Each expert's data: `--utterances` drawn (seed = expert index) from
the train manifests of the built-in demo corpus (`speechmerge data build --corpus multilingual
--size demo`). The encoder outputs of every clip are computed first (once per clip, into the
encoder-output cache) and timed apart. The merge reads each decoder tensor of the experts and
their statistics and merges it with RegMean (mean Grams, alpha 0.1; plain mean for non-linear
tensors) or Fisher merging (equal lambdas); its time is the median of `--repeats` runs.

    python benchmarks/bench_data_aware.py --experts 4 --utterances 128
    python benchmarks/bench_data_aware.py --experts 4 --utterances 128 --timed 1   # others on 16 (merge only)
    python benchmarks/bench_data_aware.py ... --fusionbench-python /work/fb-venv/bin/python

The merge's cost depends only on the tensors' shapes, not on how many utterances the statistics saw.

With `--fusionbench-python` (a virtual environment with fusion-bench 0.2.33), every decoder linear
weight is also merged by FusionBench's own `merging_with_regmean_weights` (fusion_bench.method.regmean)
in that environment, given the same weights and the same mean Gram matrices X_tᵀX_t/N_t, once in
float32 and once in float64, and compared with ours: the largest relative difference
‖ours − theirs‖_F / ‖theirs‖_F over the tensors, at each `--alphas` value. With `--compare EXPERT
STATISTICS ...` (pairs of an expert directory and its statistics folder, e.g. a study's experts and
the folders its statistics jobs name) only that comparison runs, on those experts:

    python benchmarks/bench_data_aware.py --fusionbench-python FB_PYTHON --compare E1 S1 E2 S2 ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def make_experts(base_dir: Path, root: Path, count: int) -> list[Path]:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(base_dir / "model.safetensors"))
    experts = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index + 1)
        changed = {
            name: (
                tensor + 0.01 * tensor.float().std() * torch.randn(tensor.shape, generator=generator)
                if name.startswith("model.decoder.") and tensor.numel() > 1
                else tensor
            ).to(tensor.dtype)
            for name, tensor in state.items()
        }
        directory = root / f"expert{index}"
        shutil.copytree(base_dir, directory, ignore=shutil.ignore_patterns("*.safetensors"))
        save_file(changed, str(directory / "model.safetensors"), metadata={"format": "pt"})
        experts.append(directory)
    return experts


def train_utterances(corpus: Path):
    from speechmerge.data.manifest import read_manifest

    return [u for path in sorted((corpus / "manifests").glob("*.train.*.jsonl")) for u in read_manifest(path)]


def fill_encoder_cache(base_dir: Path, utterances) -> float:
    import torch
    from transformers import WhisperForConditionalGeneration

    from speechmerge.features.encoder_cache import EncoderOutputCache, directory_encoder_key, encode_clips
    from speechmerge.features.log_mel import LogMel

    log_mel = LogMel(base_dir)
    encoder = WhisperForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32).model.encoder.eval()
    cache = EncoderOutputCache(directory_encoder_key(base_dir), log_mel.settings)
    clips = sorted({u.audio for u in utterances})
    started = time.perf_counter()
    for start in range(0, len(clips), 16):
        encode_clips(
            lambda f: encoder(torch.from_numpy(f)).last_hidden_state, log_mel, clips[start : start + 16], cache
        )
    return time.perf_counter() - started


def merge_decoder(experts: list[Path], stats, method: str) -> float:
    import torch

    from speechmerge.checkpoints.hf import HFCheckpoint
    from speechmerge.merging.data_aware import average, fisher_merge, mean_gram, regmean

    checkpoints = [HFCheckpoint(e) for e in experts]
    names = [n for n in checkpoints[0].names() if n.startswith("model.decoder.")]
    started = time.perf_counter()
    for name in names:
        weights = torch.stack([c.get(name).float() for c in checkpoints])
        if method == "fisher":
            fisher_merge(weights, torch.stack([s.fisher(name) for s in stats]))
        elif stats[0].has_gram(name):
            grams = torch.stack([mean_gram(*s.gram(name)) for s in stats])
            regmean(weights, grams, alpha=0.1, name=name)
        else:
            average(weights)
    return time.perf_counter() - started


FUSIONBENCH_CHILD = r"""
import json, sys, torch
from safetensors.torch import load_file, save_file
from fusion_bench.method.regmean.regmean import merging_with_regmean_weights
job = json.loads(sys.argv[1])
weights, grams = load_file(job["weights"]), load_file(job["grams"])
dtype = getattr(torch, job["dtype"])
params = {name: [weights[f"{t}/{name}"].to(dtype) for t in range(job["experts"])] for name in job["names"]}
regmean_weights = [
    {name[: -len(".weight")]: grams[f"{t}/{owner}"].to(dtype) for name, owner in job["owners"].items()}
    for t in range(job["experts"])
]
merged = merging_with_regmean_weights(params, regmean_weights, reduce_non_diagonal_ratio=job["alpha"])
save_file({name: tensor.contiguous() for name, tensor in merged.items()}, job["output"])
"""


def fusionbench_differences(experts: list[Path], stats, python: str, alphas: list[float], scratch: Path) -> dict:
    """Largest relative Frobenius difference, ours against FusionBench's RegMean, per (dtype, alpha)."""
    import subprocess

    import torch
    from safetensors.torch import load_file, save_file

    from speechmerge.checkpoints.hf import HFCheckpoint
    from speechmerge.errors import SpeechmergeError
    from speechmerge.merging.data_aware import mean_gram, regmean

    checkpoints = [HFCheckpoint(e) for e in experts]
    names = [n for n in checkpoints[0].names() if n.startswith("model.decoder.") and stats[0].has_gram(n)]
    owners = {name: stats[0].record.grams[name].tensor.removeprefix("gram/") for name in names}
    save_file(
        {f"{t}/{n}": c.get(n).float().contiguous() for t, c in enumerate(checkpoints) for n in names},
        str(scratch / "weights.safetensors"),
    )
    save_file(
        {
            f"{t}/{owner}": mean_gram(*s.gram(name)).contiguous()
            for t, s in enumerate(stats)
            for name, owner in owners.items()
        },
        str(scratch / "grams.safetensors"),
    )
    weights = load_file(str(scratch / "weights.safetensors"))
    grams = load_file(str(scratch / "grams.safetensors"))
    differences = {}
    for dtype in ("float32", "float64"):
        for alpha in alphas:
            job = {
                "weights": str(scratch / "weights.safetensors"),
                "grams": str(scratch / "grams.safetensors"),
                "names": names,
                "owners": owners,
                "experts": len(experts),
                "alpha": alpha,
                "dtype": dtype,
                "output": str(scratch / "fusionbench.safetensors"),
            }
            subprocess.run([python, "-c", FUSIONBENCH_CHILD, json.dumps(job)], check=True)
            theirs = load_file(job["output"])
            worst, singular = 0.0, []
            for name in names:
                stack = torch.stack([weights[f"{t}/{name}"] for t in range(len(experts))])
                gram = torch.stack([grams[f"{t}/{owners[name]}"] for t in range(len(experts))])
                try:
                    ours = regmean(stack, gram, alpha=alpha, name=name).double()
                except SpeechmergeError:  # ours refuses a singular system (no ridge); FusionBench inverts it anyway
                    singular.append(name)
                    continue
                reference = theirs[name].double()
                worst = max(worst, float((ours - reference).norm() / reference.norm()))
            differences[f"{dtype} alpha={alpha}"] = {"max": float(f"{worst:.3g}"), "singular_skipped": len(singular)}
    return {"tensors": len(names), "max_relative_difference": differences}


@contextmanager
def profiled(enabled: bool):
    """Print the top operations by self CPU time (grouped by input shape) of the block, when enabled."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as run:
        yield
    table = run.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20)
    print(table, file=sys.stderr)


def compare_only(args) -> None:
    """The FusionBench comparison on given experts and their statistics folders."""
    from speechmerge.datastats import Statistics
    from speechmerge.sysinfo import hardware

    if not args.fusionbench_python or len(args.compare) % 2:
        raise SystemExit("--compare needs --fusionbench-python and pairs of (expert, statistics folder)")
    experts = [Path(p) for p in args.compare[0::2]]
    stats = [Statistics(Path(p)) for p in args.compare[1::2]]
    with tempfile.TemporaryDirectory(prefix="bench-data-aware-") as scratch:
        found = fusionbench_differences(experts, stats, args.fusionbench_python, args.alphas, Path(scratch))
    rows = [s.record.utterances for s in stats]
    print(json.dumps({"hardware": hardware(), "utterances": [len(r) for r in rows], "fusionbench_regmean": found}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--utterances", type=int, default=128)
    parser.add_argument("--timed", type=int, default=None, help="experts whose statistics are timed (default all)")
    parser.add_argument("--rest-utterances", type=int, default=16, help="utterances of the other experts (merge only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fusionbench-python", help="python of a virtual env with fusion-bench 0.2.33")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0], help="RegMean alphas compared")
    parser.add_argument("--no-merge-timing", action="store_true", help="skip the merge timings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the statistics passes")
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's top operations of the first expert's statistics"
    )
    parser.add_argument(
        "--statistics", nargs="+", choices=("gram", "fisher"), default=["gram", "fisher"], help="what to gather"
    )
    parser.add_argument(
        "--reuse-encoder-outputs",
        metavar="CACHE",
        help="a speechmerge cache whose encoder outputs of the base are reused (their time is then not measured)",
    )
    parser.add_argument("--compare", nargs="+", metavar="PATH", help="expert, statistics folder, ... (see above)")
    args = parser.parse_args()
    if args.compare:
        compare_only(args)
        return

    from speechmerge.checkpoints.converted import models_dir

    os.environ.setdefault("SPEECHMERGE_MODEL_CACHE", str(models_dir()))
    corpus = Path(
        os.environ.get("SPEECHMERGE_CORPUS", Path.home() / ".cache/speechmerge/corpus/multilingual-demo-seed0")
    )
    root = Path(tempfile.mkdtemp(prefix="bench-data-aware-"))
    os.environ["SPEECHMERGE_CACHE"] = str(root / "cache")  # fresh: nothing cached before the run
    if args.reuse_encoder_outputs:
        (root / "cache").mkdir()
        for name in ("encoder-outputs", "encoder-keys"):
            (root / "cache" / name).symlink_to(Path(args.reuse_encoder_outputs).resolve() / name)

    from speechmerge.checkpoints.builtin import builtin_model_dir
    from speechmerge.datastats import StatisticsSettings, expert_statistics
    from speechmerge.sysinfo import hardware, peak_rss_bytes

    base = builtin_model_dir("whisper-base")
    experts = make_experts(base, root, args.experts)
    pool = train_utterances(corpus)
    timed = args.experts if args.timed is None else args.timed
    settings = [
        StatisticsSettings(
            statistics=tuple(args.statistics),
            utterances=args.utterances if index < timed else args.rest_utterances,
            seed=index,
        )
        for index in range(args.experts)
    ]
    from speechmerge.datastats.selection import sample_utterances

    chosen = [sample_utterances(pool, s.utterances, s.seed) for s in settings]
    encoder_seconds = fill_encoder_cache(base, [u for c in chosen for u in c])
    clips = len({u.audio for c in chosen for u in c})
    load_before = open("/proc/loadavg").read().split()[:3]
    stats, seconds, disk = [], [], []
    for index, (expert, setting) in enumerate(zip(experts, settings)):
        started = time.perf_counter()
        with profiled(args.profile and index == 0):
            stats.append(expert_statistics(expert, pool, setting, base=base, threads=args.threads))
        seconds.append(time.perf_counter() - started)
        disk.append(sum(f.stat().st_size for f in stats[-1].folder.iterdir()))
    merges = (
        {}
        if args.no_merge_timing
        else {
            method: statistics.median(merge_decoder(experts, stats, method) for _ in range(args.repeats))
            for method, need in (("regmean", "gram"), ("fisher", "fisher"))
            if need in args.statistics
        }
    )
    fusionbench = (
        fusionbench_differences(experts, stats, args.fusionbench_python, args.alphas, root)
        if args.fusionbench_python
        else None
    )
    print(
        json.dumps(
            {
                "hardware": hardware(),
                "load_before_statistics": load_before,
                "load_after": open("/proc/loadavg").read().split()[:3],
                "pool_utterances": len(pool),
                "encoder_seconds_all_clips": round(encoder_seconds, 1),
                "clips_encoded": clips,
                "utterances_per_expert": [s.utterances for s in settings],
                "statistics": args.statistics,
                "threads": args.threads,
                "statistics_seconds_per_expert": [round(s, 1) for s in seconds],
                "statistics_tokens_per_expert": [s.record.tokens for s in stats],
                "statistics_mib_per_expert": [round(d / 2**20, 1) for d in disk],
                "merge_seconds_median": {k: round(v, 2) for k, v in merges.items()},
                "fusionbench_regmean": fusionbench,
                "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2),
            },
            indent=1,
        )
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
