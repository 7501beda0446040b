"""Every weight-only merge method on a GPU: its time on the whole model, its speed-up over the CPU
on the same sample of tensors, and its agreement with the CPU result there.

    python benchmarks/gpu_check.py --shape large-v3 --experts 10 --out $OUT/gpu.md      # on the GPU machine
    python benchmarks/gpu_check.py --shape small --experts 3 --device cpu --methods soup tsv_m   # a dry run

Inputs are bench_scale.py's random checkpoints of Whisper's exact shapes (written once under
--workdir; float16 by default, as large-v3 ships). Per method, each a fresh process timed from
'go' to exit (benchmarks/harness.py):

- `whole on <device>`: the merge of every tensor on --device (reads, merges, writes the model);
- `sample on <device>` and `sample on cpu`: the same recipe with `keep: base` for every tensor
  outside --sample (by default the top encoder and decoder blocks), so both devices do the same
  work; their ratio is the speed-up claimed;
- agreement: over the sampled tensors, max |device − cpu| / max |cpu − base| (the difference in
  units of the merged task vector's largest entry). Methods whose statistics span the whole
  model (TIES's global top-k, PCB, ...) see only the sample in both sample runs, so the
  comparison stays like for like.

Data-aware methods (RegMean, Fisher) are left out: they need each expert's data.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import make_checkpoints, ours_command, weight_files  # noqa: E402
from harness import WHISPER_SHAPES, machine_description, median, run_child  # noqa: E402

SAMPLE = r"model\.(encoder|decoder)\.layers\.{top}\..*"


def weight_only_methods() -> list[str]:
    from speechmerge.merging.registry import all_methods

    return [m.name for m in all_methods() if not m.needs]


def recipe_command(method: str, base: Path, experts: list[Path], out: Path, device: str, sample: str | None):
    """The merge at the method's defaults; with `sample`, every other tensor kept as the base's."""
    from speechmerge.merging.memory import keep_base_override

    overrides = [keep_base_override(sample).model_dump(exclude_defaults=True)] if sample is not None else None
    return ours_command(method, {}, base, experts, out, device, overrides)


def sampled(directory: Path, pattern: str) -> dict:
    """The tensors of a checkpoint whose names match `pattern` (only those are read)."""
    from safetensors import safe_open

    tensors = {}
    for path in weight_files(directory):
        with safe_open(path, framework="pt") as handle:
            tensors.update({k: handle.get_tensor(k) for k in handle.keys() if re.fullmatch(pattern, k)})
    return tensors


def agreement(device_dir: Path, cpu_dir: Path, base: Path, pattern: str) -> float:
    """max |device − cpu| / max |cpu − base| over the sampled tensors."""
    ours, reference, start = sampled(device_dir, pattern), sampled(cpu_dir, pattern), sampled(base, pattern)
    if not reference:
        raise SystemExit(f"--sample {pattern!r} matches no tensor of {base}")
    error = max(float((ours[k].float() - reference[k].float()).abs().max()) for k in reference)
    scale = max(float((reference[k].float() - start[k].float()).abs().max()) for k in reference)
    return error / scale if scale > 0 else error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="large-v3", help="Whisper architecture (benchmarks/harness.py)")
    parser.add_argument("--experts", type=int, default=10)
    parser.add_argument("--dtype", default="float16", choices=("float32", "float16"))
    parser.add_argument("--device", default="cuda", help="the device under test (cpu for a dry run)")
    parser.add_argument("--methods", nargs="+", help="default: every weight-only method")
    parser.add_argument("--sample", help="regex of the tensors timed on both devices (default: the top blocks)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "speechmerge-scale")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (and its JSON beside it)")
    args = parser.parse_args()
    top = WHISPER_SHAPES[args.shape]["decoder_layers"] - 1
    pattern = args.sample or SAMPLE.format(top=top)
    methods = args.methods or weight_only_methods()
    base, experts = make_checkpoints(args.workdir, args.shape, args.experts, args.dtype)
    rows = {}
    for method in methods:
        times: dict[str, list[float]] = {}
        with tempfile.TemporaryDirectory(dir=args.workdir) as scratch_name:
            scratch = Path(scratch_name)
            for repeat in range(args.repeats):
                for label, device, sample in (
                    ("whole", args.device, None),
                    ("sample", args.device, pattern),
                    ("sample_cpu", "cpu", pattern),
                ):
                    out = scratch / f"{label}-{repeat}"
                    run = run_child(recipe_command(method, base, experts, out, device, sample))
                    times.setdefault(label, []).append(run["wall_seconds"])
                    if label == "whole":
                        times.setdefault("anon_gib", []).append(run["peak_anon_bytes"] / 2**30)
            error = agreement(scratch / "sample-0", scratch / "sample_cpu-0", base, pattern)
        row = {key: median(values) for key, values in times.items()}
        row["speedup"] = row["sample_cpu"] / row["sample"]
        row["agreement"] = error
        rows[method] = row
        print(f"{method}: {json.dumps(row)}", flush=True)
    text = render(args, pattern, rows)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


def render(args, pattern: str, rows: dict) -> str:
    lines = [
        f"### Every method on {args.device}: Whisper {args.shape} shapes, base + {args.experts} experts ({args.dtype})",
        "",
        f"Machine: {machine_description()}. `python benchmarks/gpu_check.py --shape {args.shape} "
        f"--experts {args.experts} --dtype {args.dtype} --device {args.device}`; medians of {args.repeats}; "
        f"sample: tensors matching `{pattern}`.",
        "",
        f"| method | whole model on {args.device}, s | peak anon. GiB | sample on {args.device}, s "
        "| sample on cpu, s | speed-up | max diff / task-vector scale |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, r in rows.items():
        lines.append(
            f"| {method} | {r['whole']:.1f} | {r['anon_gib']:.2f} | {r['sample']:.1f} | {r['sample_cpu']:.1f} "
            f"| {r['speedup']:.2f}× | {r['agreement']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
