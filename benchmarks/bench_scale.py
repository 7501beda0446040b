"""Merging at scale: speechmerge against mergekit on random checkpoints of real Whisper shapes,
with the time to just read the inputs once as the floor.

    python benchmarks/bench_scale.py small --experts 3 --repeats 3 \
        --mergekit-python /work/mk-venv/bin/python --write docs/performance.md
    python benchmarks/bench_scale.py large-v3 --experts 10 --repeats 1 --dtype float16 \
        --methods soup task_arithmetic ties dare tsv_m --write docs/performance.md

Checkpoints (written once under --workdir, reused): a base with Whisper's exact tensor shapes
(`small` or `large-v3`), weights N(0, 0.02²) (LayerNorm weights 1), and experts = base + a
realistic task vector: dense N(0, (2e-4)²) deltas on every trained tensor and exact zeros on a
frozen part (the encoder's convolutions, both positional tables and the lower half of the
encoder blocks), as when the bottom of the encoder is frozen during fine-tuning.

Per configuration and repeat, in alternation so all tools see the same machine and page cache:
the floor (a process that reads every input file once, sequentially, and writes a file of the
merged model's size once: the least any merge tool must do), speechmerge
(`merge` from Python: plan, read, merge, write), and mergekit (`mergekit-yaml`, with its Whisper
definition's decoder prefix fixed in memory — stock mergekit cannot merge Whisper — and
`--out-shard-size 500M`, its lowest-memory setting). Input content hashes (speechmerge's model
card) are computed once before the timed runs, as a study would; that one-time cost is
reported separately. Times are wall-clock medians; memory is the peak anonymous memory above
the process baseline and the peak total RSS (which includes memory-mapped input pages).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import WHISPER_SHAPES, machine_description, median, run_child, write_section  # noqa: E402

# speechmerge method -> (its params, mergekit method, mergekit per-model parameters, global parameters)
MERGEKIT = {
    "soup": ({}, "linear", lambda t: {"weight": 1.0}, {}),
    "task_arithmetic": ({}, "task_arithmetic", lambda t: {"weight": 1.0 / t}, {}),
    "ties": ({"density": 0.2, "topk": "per_tensor"}, "ties", lambda t: {"weight": 1.0, "density": 0.2}, {}),
    "dare": ({"drop": 0.9}, "dare_linear", lambda t: {"weight": 1.0 / t, "density": 0.1}, {}),
}
EXTRA = {  # speechmerge-only configurations worth timing at scale
    "ties_global": ("ties", {"density": 0.2}),
    "tsv_m": ("tsv_m", {}),
    "tsv_m_fast": ("tsv_m", {"svd": "randomised", "orthogonaliser": "newton_schulz"}),
    "boosted_tsv_m": ("boosted_tsv_m", {}),
    "boosted_tsv_m_fast": ("boosted_tsv_m", {"svd": "randomised"}),
    "iso_c": ("iso_c", {}),
    "iso_cts_fast": ("iso_cts", {"svd": "randomised", "orthogonaliser": "newton_schulz"}),
    "lors": ("lors", {}),
    "lors_fast": ("lors", {"svd": "randomised"}),
}
LOADS: list[float] = []  # 1-minute load average after each run

OURS_CHILD = r"""
import json, sys
from speechmerge.recipe import parse_recipe
from speechmerge.merging.api import merge
recipe = parse_recipe(json.loads(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
_, report = merge(recipe, show_progress=False)
print(json.dumps({"engine_seconds": report.seconds, "split": len(report.split)}), flush=True)
"""

MERGEKIT_CHILD = r"""
import importlib.resources, json, sys
import mergekit._data.architectures as definitions
from mergekit.architecture import json_definitions
from mergekit.scripts.run_yaml import main
data = json.loads((importlib.resources.files(definitions) / "whisper.json").read_text())
data["modules"]["decoder"]["weight_prefix"] = "model.decoder."  # the missing dot (anchors.md §1.1)
json_definitions.NAME_TO_ARCH["WhisperForConditionalGeneration"] = [
    json_definitions._load_architecture_json(json.dumps(data))]
sys.argv = ["mergekit-yaml", *sys.argv[1:]]
print("ready", flush=True)
sys.stdin.readline()
try:
    main()
except SystemExit as stop:
    if stop.code:
        raise
print("{}", flush=True)
"""

FLOOR_CHILD = r"""
import json, os, sys
files, output, output_bytes = json.loads(sys.argv[1])
buffer = bytearray(8 << 20)
print("ready", flush=True)
sys.stdin.readline()
total = 0
for name in files:
    with open(name, "rb", buffering=0) as handle:
        while (count := handle.readinto(buffer)):
            total += count
written = 0
with open(output, "wb", buffering=0) as handle:
    while written < output_bytes:
        written += handle.write(memoryview(buffer)[: min(len(buffer), output_bytes - written)])
os.remove(output)
print(json.dumps({"bytes": total, "written": written}), flush=True)
"""


def drop_page_cache() -> None:
    """Write back dirty pages and empty the kernel's page cache (root only), so the next run
    reads its inputs from disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _is_frozen(name: str, layers: int) -> bool:
    if name.startswith(("model.encoder.conv", "model.encoder.embed_positions", "model.decoder.embed_positions")):
        return True
    if name.startswith("model.encoder.layers."):
        return int(name.split(".")[3]) < layers // 2
    return False


def make_checkpoints(workdir: Path, shape: str, experts: int, dtype: str) -> tuple[Path, list[Path]]:
    """Write (once) a base and `experts` experts of the given Whisper shape; see the docstring."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechmerge.checkpoints.hf import HFCheckpoint
    from speechmerge.checkpoints.writer import StreamingSafetensorsWriter, TensorSlot

    root = workdir / f"{shape}-{dtype}"
    config = WhisperConfig(**WHISPER_SHAPES[shape], architectures=["WhisperForConditionalGeneration"])
    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in WhisperForConditionalGeneration(config).state_dict().items()}
    names.pop("proj_out.weight")
    torch_dtype = getattr(torch, dtype)
    slots = [TensorSlot(name, shape_, torch_dtype) for name, shape_ in names.items()]

    def write(target: Path, make) -> None:
        if (target / "config.json").is_file():
            return
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        writer = StreamingSafetensorsWriter(tmp, slots, 2 * 10**9)
        for slot in slots:
            writer.write(slot.name, make(slot.name, slot.shape).to(torch_dtype))
        writer.close()
        config.save_pretrained(tmp)
        tmp.rename(target)

    def seeded(*parts) -> torch.Generator:
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFFFFFF)

    def base_tensor(name: str, shape_: tuple[int, ...]):
        if name.endswith("layer_norm.weight"):
            return torch.ones(shape_)
        return 0.02 * torch.randn(shape_, generator=seeded("base", name))

    base_dir = root / "base"
    write(base_dir, base_tensor)
    base = HFCheckpoint(base_dir)
    dirs = []
    for index in range(experts):

        def expert_tensor(name: str, shape_: tuple[int, ...], index=index):
            value = base.get(name).to(torch.float32)
            if _is_frozen(name, config.encoder_layers):
                return value
            return value + 2e-4 * torch.randn(shape_, generator=seeded("expert", index, name))

        write(root / f"expert{index}", expert_tensor)
        dirs.append(root / f"expert{index}")
    return base_dir, dirs


def ours_command(
    method: str, params: dict, base: Path, experts: list[Path], out: Path, device: str, overrides: list | None = None
) -> list[str]:
    recipe = {
        "base": str(base),
        "experts": [str(e) for e in experts],
        "method": method,
        "params": params,
        "output": str(out),
        "device": device,
        "overrides": overrides or [],
    }
    return [sys.executable, "-c", OURS_CHILD, json.dumps(recipe)]


def mergekit_command(
    python: str, method: str, base: Path, experts: list[Path], out: Path, scratch: Path, out_dtype: str
) -> list[str]:
    _, kit_method, per_model, global_params = MERGEKIT[method]
    config = {
        "merge_method": kit_method,
        "base_model": str(base),
        "models": [{"model": str(e), "parameters": per_model(len(experts))} for e in experts],
        "dtype": "float32",  # arithmetic in float32, as speechmerge does
        "out_dtype": out_dtype,  # written in the inputs' dtype, as speechmerge does by default
        "parameters": global_params,
    }
    if kit_method == "linear":
        config.pop("base_model")
    path = scratch / "mergekit.yml"
    path.write_text(json.dumps(config))
    return [python, "-c", MERGEKIT_CHILD, str(path), str(out), "--out-shard-size", "500M"]


def weight_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("*.safetensors"))


def hash_inputs_once(base: Path, experts: list[Path], cache: Path) -> float:
    """Fill speechmerge's content-hash cache for the inputs; return the seconds it took."""
    from speechmerge.checkpoints.hf import files_hash

    os.environ["SPEECHMERGE_CACHE"] = str(cache)
    start = time.perf_counter()
    for directory in [base, *experts]:
        files_hash([Path(f) for f in weight_files(directory)])
    return time.perf_counter() - start


def benchmark(args) -> tuple[dict, float, float]:
    base, experts = make_checkpoints(args.workdir, args.shape, args.experts, args.dtype)
    inputs = [f for d in [base, *experts] for f in weight_files(d)]
    input_bytes = sum(Path(f).stat().st_size for f in inputs)
    hashing = hash_inputs_once(base, experts, args.workdir / "cache")
    rows: dict[str, dict[str, list[dict]]] = {}
    output_bytes = sum(Path(f).stat().st_size for f in weight_files(base))
    for repeat in range(args.repeats):
        if args.cold:
            drop_page_cache()
        with tempfile.TemporaryDirectory(dir=args.workdir) as scratch_name:
            floor_args = json.dumps([inputs, str(Path(scratch_name) / "floor.bin"), output_bytes])
            rows.setdefault("floor", {}).setdefault("ours", []).append(
                run_child([sys.executable, "-c", FLOOR_CHILD, floor_args])
            )
        for label in args.methods:
            method, params = EXTRA.get(label, (label, MERGEKIT.get(label, ({},))[0]))
            with tempfile.TemporaryDirectory(dir=args.workdir) as scratch_name:
                scratch = Path(scratch_name)
                row = rows.setdefault(label, {})
                if args.cold:
                    drop_page_cache()
                row.setdefault("ours", []).append(
                    run_child(ours_command(method, params, base, experts, scratch / "ours", args.device))
                )
                if args.mergekit_python and label in MERGEKIT:
                    command = mergekit_command(
                        args.mergekit_python, label, base, experts, scratch / "mk", scratch, args.dtype
                    )
                    if args.cold:
                        drop_page_cache()
                    row.setdefault("mergekit", []).append(run_child(command))
            done = rows[label]
            LOADS.append(os.getloadavg()[0])
            print(
                f"{label} run {repeat + 1}: ours {done['ours'][-1]['wall_seconds']:.1f} s"
                + (f", mergekit {done['mergekit'][-1]['wall_seconds']:.1f} s" if "mergekit" in done else ""),
                flush=True,
            )
    return rows, hashing, input_bytes


def render(args, rows: dict, hashing: float, input_bytes: int, load: str) -> str:
    command = (
        f"python benchmarks/bench_scale.py {args.shape} --experts {args.experts} --dtype {args.dtype} "
        f"--repeats {args.repeats} --methods {' '.join(args.methods)}"
        + (" --mergekit-python MK_PYTHON" if args.mergekit_python else "")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (" --cold" if args.cold else "")
        + " --write docs/performance.md"
    )
    floor = median([r["wall_seconds"] for r in rows["floor"]["ours"]])
    cache = (
        "cold page cache (emptied before every run)"
        if args.cold
        else "inputs in the page cache (warm after the first run)"
    )
    lines = [
        f"### Merging at scale: Whisper {args.shape} shapes, base + {args.experts} experts ({args.dtype}"
        + (", cold cache)" if args.cold else ")"),
        "",
        f"Generated by `{command}`"
        + (
            " (MK_PYTHON: a virtual environment with `torch==2.13.0` and `mergekit==0.1.5`)"
            if args.mergekit_python
            else ""
        )
        + " "
        f"on {machine_description()}, shared with other jobs (1-minute load average after each run: {load}); medians of {args.repeats} run(s), each a "
        f"fresh process. Inputs: {input_bytes / 2**30:.1f} GiB (base + {args.experts} experts); "
        f"{cache}; floor (every input file read once, sequentially, and a file of the merged size written once): "
        f"{floor:.1f} s. speechmerge's one-time content "
        f"hashing of the inputs (cached afterwards): {hashing:.1f} s.",
        "",
        "| method | speechmerge time (s) | × floor | peak anon (MiB) | peak RSS (MiB) | mergekit time (s) | mergekit peak anon (MiB) | mergekit peak RSS (MiB) | time ratio (ours / mergekit) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in rows.items():
        if label == "floor":
            continue
        ours = runs["ours"]
        seconds = median([r["wall_seconds"] for r in ours])
        cells = [
            label,
            f"{seconds:.1f}",
            f"{seconds / floor:.2f}",
            f"{median([r['peak_anon_bytes'] for r in ours]) / 2**20:.0f}",
            f"{median([r['peak_rss_bytes'] for r in ours]) / 2**20:.0f}",
        ]
        if "mergekit" in runs:
            kit = runs["mergekit"]
            kit_seconds = median([r["wall_seconds"] for r in kit])
            cells += [
                f"{kit_seconds:.1f}",
                f"{median([r['peak_anon_bytes'] for r in kit]) / 2**20:.0f}",
                f"{median([r['peak_rss_bytes'] for r in kit]) / 2**20:.0f}",
                f"{seconds / kit_seconds:.2f}",
            ]
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=sorted(WHISPER_SHAPES), help="Whisper architecture whose shapes to use")
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="checkpoint dtype")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="speechmerge's compute device")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["soup", "task_arithmetic", "ties", "dare"],
        help=f"any of {sorted(MERGEKIT) + sorted(EXTRA)}",
    )
    parser.add_argument("--mergekit-python", help="python of a virtual env with mergekit installed")
    parser.add_argument("--cold", action="store_true", help="empty the page cache before every run (root)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "speechmerge-scale")
    parser.add_argument("--write", type=Path, help="replace this configuration's section of this Markdown file")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows, hashing, input_bytes = benchmark(args)
    body = render(args, rows, hashing, input_bytes, f"median {median(LOADS):.1f}, max {max(LOADS):.1f}")
    print(body)
    if args.write:
        key = f"{args.shape} x{args.experts} {args.dtype}" + (" cold" if args.cold else "")
        write_section(args.write, "bench_scale", key, body)


if __name__ == "__main__":
    main()
