"""Time every merge method on Whisper-small-shaped random checkpoints, and compare TSV-M, Iso-C
and Iso-CTS with FusionBench's in-memory implementations on the same inputs.

    python benchmarks/bench_methods.py --experts 3 10 --repeats 3 \
        --fusionbench-python /work/fb-venv/bin/python --write docs/performance.md

Checkpoints: a random Whisper with Whisper-small's widths (d_model 768, FFN 3072, vocabulary
51,865; `--layers` encoder and decoder blocks, 12 = Whisper small) and experts = base + a
fine-tune-like delta (rank-32 plus 30% Gaussian noise on 2-D tensors, Gaussian elsewhere,
scale 1e-3), written once under `--workdir` as float32 safetensors.

Every run is a fresh child process; its wall time covers reading the inputs, merging and (for
speechmerge) writing the output, and its memory is the peak resident anonymous memory
(RssAnon, sampled from /proc every 2 ms) above the child's baseline after imports. FusionBench
(PyPI fusion-bench, installed in its own virtual environment, see --fusionbench-python) holds
every model in memory as its model pools do: load base and experts, form task vectors, call
`compute_and_sum_svd_mem_reduction` / `iso_c` / `iso_cts`, add α = 1 times the result to the
base; its time excludes saving. Runs of the two tools are interleaved so that both see the
same machine load; medians of `--repeats` runs are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import WHISPER_SHAPES, median, run_child, write_section  # noqa: E402

# (label, method, params): every registered method with its defaults, plus the fast SVD options.
RUNS = [
    ("soup", "soup", {}),
    ("model_stock", "model_stock", {}),
    ("karcher", "karcher", {}),
    ("multislerp", "multislerp", {}),
    ("task_arithmetic", "task_arithmetic", {}),
    ("ties", "ties", {}),
    ("dare", "dare", {}),
    ("pcb", "pcb", {}),
    ("sce", "sce", {}),
    ("breadcrumbs", "breadcrumbs", {}),
    ("della", "della", {}),
    ("lors_mp", "lors_mp", {}),
    ("lors", "lors", {}),
    ("lors_svp", "lors_svp", {}),
    ("tsv_m", "tsv_m", {}),
    ("tsv_m randomised+NS", "tsv_m", {"svd": "randomised", "orthogonaliser": "newton_schulz"}),
    ("boosted_tsv_m", "boosted_tsv_m", {}),
    ("iso_c", "iso_c", {}),
    ("iso_cts", "iso_cts", {}),
    ("iso_cts randomised+NS", "iso_cts", {"svd": "randomised", "orthogonaliser": "newton_schulz"}),
]
LOADS: list[float] = []  # 1-minute load average after each run
SVD_ERRORS: dict[int, dict] = {}  # experts -> randomised-vs-exact top-k SVD errors
FUSIONBENCH = {"tsv_m": "tsv_m", "iso_c": "iso_c", "iso_cts": "iso_cts"}  # our label -> FusionBench function

OURS_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from speechmerge.recipe import parse_recipe
from speechmerge.merging.api import merge
recipe = parse_recipe(json.loads(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
start = time.perf_counter()
merge(recipe, show_progress=False)
print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
"""

FUSIONBENCH_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from safetensors.torch import load_file, save_file
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
job = json.loads(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
start = time.perf_counter()
base = load_file(job["base"])
experts = [load_file(path) for path in job["experts"]]
task_vectors = [{k: e[k] - base[k] for k in base} for e in experts]
del experts
if job["method"] == "tsv_m":
    merged = compute_and_sum_svd_mem_reduction(task_vectors, exclude_keys=job["exclude"], accelerator="cpu")
elif job["method"] == "iso_c":
    merged = iso_c(task_vectors, accelerator="cpu", exclude_keys=job["exclude"])
else:
    merged = iso_cts(task_vectors, common_space_fraction=0.8, accelerator="cpu", exclude_keys=job["exclude"])
result = {k: base[k] + merged[k] for k in base}
seconds = time.perf_counter() - start
save_file({k: v.contiguous() for k, v in result.items()}, job["output"])
print(json.dumps({"seconds": seconds}), flush=True)
"""


def fine_tune_like(tensor, generator, scale: float = 1e-3):
    import torch

    if tensor.dim() == 2 and min(tensor.shape) > 64:
        rank = 32
        low = torch.randn(tensor.shape[0], rank, generator=generator) @ torch.randn(
            rank, tensor.shape[1], generator=generator
        )
        return tensor + scale * (low / rank**0.5 + 0.3 * torch.randn(tensor.shape, generator=generator))
    return tensor + scale * torch.randn(tensor.shape, generator=generator)


def make_checkpoints(workdir: Path, experts: int, layers: int) -> tuple[Path, list[Path]]:
    """Base + `experts` fine-tune-like experts, written once (reused when present)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    root = workdir / f"small-{layers}layers"
    base_dir = root / "base"
    if not (base_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        config = WhisperConfig(**{**WHISPER_SHAPES["small"], "encoder_layers": layers, "decoder_layers": layers})
        model = WhisperForConditionalGeneration(config)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "proj_out.weight"}
        tmp = base_dir.with_name("base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tmp.rename(base_dir)
        del model, state
    base = None
    dirs = []
    for index in range(experts):
        target = root / f"expert{index}"
        if not (target / "model.safetensors").exists():
            base = base if base is not None else load_file(base_dir / "model.safetensors")
            generator = torch.Generator().manual_seed(1000 + index)
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            shutil.copy(base_dir / "config.json", tmp / "config.json")
            save_file(
                {k: fine_tune_like(v, generator) for k, v in base.items()},
                str(tmp / "model.safetensors"),
                metadata={"format": "pt"},
            )
            tmp.rename(target)
        dirs.append(target)
    return base_dir, dirs


def excluded_two_d(base_dir: Path) -> list[str]:
    """2-D tensors that are not block matrices (embeddings, positional tables): FusionBench's
    exclude_keys, so that both tools decompose exactly the same matrices."""
    import json as _json

    from safetensors import safe_open

    from speechmerge.checkpoints.whisper import whisper_layout

    layout = whisper_layout(_json.loads((base_dir / "config.json").read_text()))
    with safe_open(str(base_dir / "model.safetensors"), "pt") as handle:
        return [
            n for n in handle.keys() if len(handle.get_slice(n).get_shape()) == 2 and not layout.role(n).is_block_matrix
        ]


def relative_difference(ours: Path, theirs: Path, base_dir: Path) -> float:
    """max over tensors of max|ours − theirs| / max|theirs − base| (the worst tensor is printed)."""
    from safetensors.torch import load_file

    base = load_file(base_dir / "model.safetensors")
    mine = {}
    for file in sorted(ours.glob("*.safetensors")):
        mine.update(load_file(file))
    other = load_file(theirs)
    worst, where = 0.0, None
    for name, value in other.items():
        delta = float((value - base[name]).abs().max())
        if delta > 0 and float((mine[name].float() - value).abs().max()) / delta > worst:
            worst, where = float((mine[name].float() - value).abs().max()) / delta, name
    print(f"largest relative difference {worst:.1e} on {where}", flush=True)
    return worst


def randomised_svd_error(base_dir: Path, expert_dir: Path, experts: int) -> dict:
    """Over the block matrices of one expert's task vector: the randomised top-k (k = ⌊r/T⌋, as
    TSV-M keeps) against the exact one — the ratio of their Frobenius truncation errors and the
    largest relative error of the kept singular values."""
    import torch
    from safetensors.torch import load_file

    from speechmerge.checkpoints.whisper import whisper_layout
    from speechmerge.merging.spectral import top_singular

    layout = whisper_layout(json.loads((base_dir / "config.json").read_text()))
    base, expert = load_file(base_dir / "model.safetensors"), load_file(expert_dir / "model.safetensors")
    ratios, sigma_errors = [], []
    for name, value in base.items():
        if value.dim() != 2 or not layout.role(name).is_block_matrix:
            continue
        delta = expert[name] - value
        k = min(delta.shape) // experts
        exact = top_singular(delta, k)
        fast = top_singular(delta, k, randomised=True, seed=0)
        exact_error = torch.linalg.matrix_norm(delta - (exact[0] * exact[1]) @ exact[2])
        fast_error = torch.linalg.matrix_norm(delta - (fast[0] * fast[1]) @ fast[2])
        ratios.append(float(fast_error / exact_error))
        sigma_errors.append(float(((fast[1] - exact[1]).abs() / exact[1]).max()))
    return {
        "k": min(delta.shape) // experts,
        "median_ratio": median(ratios),
        "max_ratio": max(ratios),
        "max_sigma_error": max(sigma_errors),
        "matrices": len(ratios),
    }


def benchmark(args) -> dict:
    results = {}
    for experts in args.experts:
        base_dir, expert_dirs = make_checkpoints(args.workdir, experts, args.layers)
        exclude = excluded_two_d(base_dir)
        if args.svd_errors:
            SVD_ERRORS[experts] = randomised_svd_error(base_dir, expert_dirs[0], experts)
        for label, method, params in RUNS:
            if args.methods and label not in args.methods:
                continue
            row = results.setdefault(f"{label}|{experts}", {"ours": [], "fb": [], "diff": None})
            for repeat in range(args.repeats):
                with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
                    out = Path(scratch) / "merged"
                    recipe = {
                        "base": str(base_dir),
                        "experts": [str(d) for d in expert_dirs],
                        "method": method,
                        "params": params,
                        "output": str(out),
                        "device": args.device,
                    }
                    row["ours"].append(
                        run_child([sys.executable, "-c", OURS_CHILD, json.dumps(recipe), str(args.threads)])
                    )
                    if label in FUSIONBENCH and args.fusionbench_python:
                        job = {
                            "method": FUSIONBENCH[label],
                            "base": str(base_dir / "model.safetensors"),
                            "experts": [str(d / "model.safetensors") for d in expert_dirs],
                            "exclude": exclude,
                            "output": str(Path(scratch) / "fusionbench.safetensors"),
                        }
                        row["fb"].append(
                            run_child(
                                [args.fusionbench_python, "-c", FUSIONBENCH_CHILD, json.dumps(job), str(args.threads)]
                            )
                        )
                        if repeat == 0:
                            row["diff"] = relative_difference(out, Path(job["output"]), base_dir)
                LOADS.append(os.getloadavg()[0])
                print(
                    f"{label} T={experts} run {repeat + 1}: {row['ours'][-1]['seconds']:.1f} s"
                    + (f", FusionBench {row['fb'][-1]['seconds']:.1f} s" if row["fb"] else ""),
                    flush=True,
                )
    return results


def table(results: dict, args, load: str) -> str:
    command = (
        f"python benchmarks/bench_methods.py --experts {' '.join(map(str, args.experts))} --layers {args.layers} "
        f"--repeats {args.repeats} --threads {args.threads} --section '{args.section}'"
        + (f" --methods {' '.join(repr(m) for m in args.methods)}" if args.methods else "")
        + (" --fusionbench-python FB_PYTHON" if args.fusionbench_python else "")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + ("" if args.svd_errors else " --no-svd-errors")
        + " --write docs/performance.md"
    )
    lines = [
        f"### Merge methods: {args.section}",
        "",
        f"Generated by `{command}` (FB_PYTHON: a virtual environment with `torch==2.13.0` and `fusion-bench==0.2.33`).",
        (
            f"Random Whisper-small-shaped checkpoints with {args.layers} encoder and {args.layers} decoder blocks "
            f"(Whisper small has 12), float32; {args.threads} torch threads on a 2-core CPU shared with other work "
            f"(load average during the run: {load}); medians of {args.repeats} runs, each a fresh process. "
            "Time: read inputs, merge, write the output (FusionBench: load every model, merge in memory, not saving). "
            "Memory: peak resident anonymous memory above the process's baseline after imports."
        ),
        "",
        "| method | experts | time (s) | peak memory (MiB) | FusionBench time (s) | FusionBench memory (MiB) | time ratio | memory ratio | max relative difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in results.items():
        label, experts = key.split("|")
        ours_s = median([r["seconds"] for r in row["ours"]])
        ours_m = median([r["peak_anon_bytes"] for r in row["ours"]]) / 2**20
        if row["fb"]:
            fb_s = median([r["seconds"] for r in row["fb"]])
            fb_m = median([r["peak_anon_bytes"] for r in row["fb"]]) / 2**20
            extra = f"{fb_s:.1f} | {fb_m:.0f} | {ours_s / fb_s:.2f} | {ours_m / fb_m:.2f} | {row['diff']:.1e}"
        else:
            extra = " | | | | "
        lines.append(f"| {label} | {experts} | {ours_s:.1f} | {ours_m:.0f} | {extra} |")
    lines += ["", "Max relative difference: over tensors, max |ours − FusionBench| / max |FusionBench − base|."]
    if not SVD_ERRORS:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        (
            "Randomised top-k SVD (`svd: randomised`: 10 oversamples, 2 power iterations) against the exact one, "
            "on the block matrices of one expert's task vector, k = ⌊r/T⌋ as TSV-M keeps:"
        ),
        "",
        "| experts | k (r = 768) | matrices | truncation error ratio, median | max | max relative error of σ_1..k |",
        "|---|---|---|---|---|---|",
        *[
            f"| {t} | {e['k']} | {e['matrices']} | {e['median_ratio']:.4f} | {e['max_ratio']:.4f} | {e['max_sigma_error']:.1e} |"
            for t, e in SVD_ERRORS.items()
        ],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[3, 10], help="numbers of experts to benchmark")
    parser.add_argument("--layers", type=int, default=12, help="encoder and decoder blocks (12 = Whisper small)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; medians are reported")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="speechmerge's compute device")
    parser.add_argument("--methods", nargs="*", help="only these labels (see RUNS in this file)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "speechmerge-bench",
        help="where checkpoints and scratch outputs go",
    )
    parser.add_argument("--fusionbench-python", help="python of a virtual env with fusion-bench installed")
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of this Markdown file")
    parser.add_argument("--section", default="all methods", help="name of that section (one per configuration)")
    parser.add_argument(
        "--no-svd-errors",
        dest="svd_errors",
        action="store_false",
        help="skip the randomised-against-exact SVD error table",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)  # this process's own SVDs (the error table) too
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = benchmark(args)
    load = f"median {median(LOADS):.1f}, max {max(LOADS):.1f}"
    section = table(results, args, load)
    print(section)
    if args.write:
        write_section(args.write, "bench_methods", args.section, section)


if __name__ == "__main__":
    main()
