"""TSV-M, matrix by matrix: ours and FusionBench 0.2.33's in float32 against the float64 merge.

For every block matrix (2-D weight under `.layers.`) of a base and its experts (safetensors
checkpoints, e.g. bench_methods.py's random Whisper-small ones), with a nonzero task vector:
speechmerge's `tsv_m` and FusionBench's `compute_and_sum_svd_mem_reduction` in float32 and
float64, each difference as max |·| / max |float64 merge|, and the conditioning that decides it
(the smallest singular value of the concatenated U and Vᵀ, whose polar factors TSV-M takes).
Run it with a Python that has both speechmerge and fusion-bench importable:

    PYTHONPATH=$PWD FB_PYTHON benchmarks/tsv_agreement.py /tmp/speechmerge-bench/small-12layers

Prints the worst matrices (by ours against float64) and the maxima over all of them.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a folder with base/ and expert0/, expert1/, ... (safetensors)")
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--show", type=int, default=5, help="matrices to list")
    args = parser.parse_args()

    import torch
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
    from safetensors import safe_open

    from speechmerge.merging.context import TensorContext
    from speechmerge.merging.methods.subspace import tsv_m

    torch.set_num_threads(1)

    def checkpoint(name: str):
        return safe_open(glob.glob(str(args.root / name / "*.safetensors"))[0], "pt")

    base = checkpoint("base")
    experts = [checkpoint(f"expert{i}") for i in range(args.experts)]
    names = [n for n in base.keys() if ".layers." in n and len(base.get_slice(n).get_shape()) == 2]

    def ours(tasks, dtype):
        ctx = TensorContext(name="m", role=None, is_matrix=True, seed=0, device=torch.device("cpu"))
        weights = torch.ones(len(tasks), dtype=dtype)
        return tsv_m(
            tasks.to(dtype),
            None,
            weights,
            ctx,
            scale=1.0,
            orthogonaliser="svd",
            svd="exact",
            ns_steps=5,
            ns_coefficients="muon",
        )

    def theirs(tasks, dtype):
        return compute_and_sum_svd_mem_reduction([{"m": t.to(dtype).clone()} for t in tasks], accelerator="cpu")["m"]

    rows = []
    for name in names:
        b = base.get_tensor(name).float()
        tasks = torch.stack([e.get_tensor(name).float() - b for e in experts])
        if float(tasks.abs().max()) == 0:
            continue
        truth = ours(tasks, torch.float64)
        scale = float(truth.abs().max())

        def off(x, truth=truth, scale=scale):
            return float((x.double() - truth).abs().max()) / scale

        k = min(tasks.shape[1:]) // len(tasks)
        us, vs = [], []
        for task in tasks.double():
            u, _, vh = torch.linalg.svd(task, full_matrices=False)
            us.append(u[:, :k])
            vs.append(vh[:k])
        rows.append(
            {
                "name": name,
                "ours32": off(ours(tasks, torch.float32)),
                "theirs32": off(theirs(tasks, torch.float32)),
                "theirs64": off(theirs(tasks, torch.float64)),
                "u_min": float(torch.linalg.svdvals(torch.cat(us, 1)).min()),
                "v_min": float(torch.linalg.svdvals(torch.cat(vs, 0)).min()),
            }
        )
        print(f"{name}: ours {rows[-1]['ours32']:.1e}, FusionBench {rows[-1]['theirs32']:.1e}", flush=True)
    rows.sort(key=lambda r: -r["ours32"])
    print(f"\n{len(rows)} matrices; differences from the float64 merge, as max |·| / max |merge|\n")
    print("| matrix | ours float32 | FusionBench float32 | FusionBench float64 | σ_min U | σ_min Vᵀ |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows[: args.show]:
        print(
            f"| {r['name']} | {r['ours32']:.1e} | {r['theirs32']:.1e} | {r['theirs64']:.1e} | {r['u_min']:.1e} | {r['v_min']:.1e} |"
        )
    worst = {key: max(r[key] for r in rows) for key in ("ours32", "theirs32", "theirs64")}
    print(
        f"| **max over all** | {worst['ours32']:.1e} | {worst['theirs32']:.1e} | {worst['theirs64']:.1e} | "
        f"{min(r['u_min'] for r in rows):.1e} | {min(r['v_min'] for r in rows):.1e} |"
    )


if __name__ == "__main__":
    main()
