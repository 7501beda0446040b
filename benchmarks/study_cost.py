"""What a study recipe costs on this CPU, before running it: the cost model behind the recipes' sizes.

The study's own plan (speechmerge.study.plan: the same jobs, sets and limits the run will have)
gives the counts; measured unit costs turn them into CPU seconds:

    training     (experts × steps + baseline steps) × s/step of the recipe's mode
    encoder      distinct clips × s/clip, once (decoder mode: the base's encoder serves every model;
                 top-encoder experts: their encoder differs per model, so every scored model encodes
                 its clips once: models × distinct clips of its sets)
    decoding     Σ over scoring jobs of their decodes (one clip × task) × s/decode
    merging      merges (every grid point; a selected point again at test unless kept) × experts × s per expert

Wall time = CPU seconds / cores (the study's pool of workers, one thread each).

    python benchmarks/study_cost.py recipes/multilingual.yaml --step 4.5 --encode 1.0 --decode 0.45 --merge 3
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from speechmerge.data.manifest import read_manifest
from speechmerge.study.data import load_set
from speechmerge.study.plan import plan_study, test_job
from speechmerge.study.recipe import load_study


def _clips(set_specs: list[dict], sizes: dict) -> tuple[int, set[str]]:
    """(decodes, distinct audio paths) of a job's sets."""
    decodes, audio = 0, set()
    for spec in set_specs:
        key = (spec["path"], spec["limit"])
        if key not in sizes:
            sizes[key] = [str(u.audio) for u in load_set(spec)]
        decodes += len(sizes[key])
        audio.update(sizes[key])
    return decodes, audio


def _training_audio(plan) -> set[str]:
    audio = set()
    for expert in plan.data.experts:
        selection = expert.selection
        for source in selection.sources:
            paths = [source] if Path(source).is_file() else sorted(Path(source).glob("manifests/*.jsonl"))
            for path in paths:
                for u in read_manifest(path):
                    if u.split in (None, "train", "validation") and selection.keeps(u.language, u.task, u.domain):
                        audio.add(str(u.audio))
    return audio


def study_counts(recipe_path: Path) -> dict:
    """Counts of the work a recipe plans: steps, clips to encode, decodes and merges per job kind."""
    recipe = load_study(recipe_path)
    plan = plan_study(recipe, progress=False)
    config = recipe.experts.config()
    trained = [j for j in plan.training if j.kind == "expert"]
    baselines = [j for j in plan.training if j.kind == "baseline"]
    sizes: dict = {}
    counts = {
        "mode": config.mode if config.mode != "top_encoder" else f"top_encoder K={config.encoder_layers}",
        "experts": len(plan.experts),
        "steps": len(trained) * config.steps + len(baselines) * len(trained) * config.steps,
        "baselines": [j.spec["baseline"] for j in baselines],
        "decodes": {},
        "models scored": {},
        "clips encoded per model": {},
    }
    tests = [test_job(plan, method, points[0]) for method, points in plan.grid.items()]
    eval_audio: set[str] = set()
    for kind, jobs in (("references", plan.references), ("validation", plan.validation), ("test", tests)):
        per_job = [_clips(job.spec["sets"], sizes) for job in jobs]
        counts["decodes"][kind] = sum(d for d, _ in per_job)
        counts["models scored"][kind] = len(jobs)
        counts["clips encoded per model"][kind] = sum(len(a) for _, a in per_job)
        eval_audio.update(itertools.chain.from_iterable(a for _, a in per_job))
    counts["training clips"] = len(_training_audio(plan))
    counts["evaluation clips"] = len(eval_audio)
    # a test job merges again unless its validation job kept the model (keep_models: all, or a one-point grid)
    remerged = [m for m, points in plan.grid.items() if recipe.keep_models != "all" and len(points) > 1]
    counts["merges"] = len(plan.validation) + len(remerged)
    counts["top_encoder"] = config.mode in ("top_encoder", "full", "lora")
    return counts


def cpu_seconds(counts: dict, step: float, encode: float, decode: float, merge: float) -> dict[str, float]:
    """CPU seconds per part of the study (see the module docstring)."""
    encoded = counts["training clips"] + (
        sum(counts["clips encoded per model"].values()) if counts["top_encoder"] else counts["evaluation clips"]
    )
    return {
        "training": counts["steps"] * step,
        "encoder": encoded * encode,
        "decoding": sum(counts["decodes"].values()) * decode,
        "merging": counts["merges"] * counts["experts"] * merge,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--step", type=float, required=True, help="CPU s per training step of the recipe's mode")
    parser.add_argument("--encode", type=float, required=True, help="CPU s per clip through the encoder")
    parser.add_argument("--decode", type=float, required=True, help="CPU s per decode (clip x task)")
    parser.add_argument("--merge", type=float, required=True, help="CPU s per expert per merge")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    counts = study_counts(args.recipe)
    parts = cpu_seconds(counts, args.step, args.encode, args.decode, args.merge)
    print(f"{args.recipe}: {counts['experts']} experts ({counts['mode']}), baselines {counts['baselines'] or 'none'}")
    print(
        f"  training steps {counts['steps']}; clips encoded: training {counts['training clips']}, "
        f"evaluation {counts['evaluation clips']}"
    )
    for kind, decodes in counts["decodes"].items():
        print(f"  {kind}: {counts['models scored'][kind]} models, {decodes} decodes")
    print(f"  merges {counts['merges']}")
    print("| part | CPU s | share % |\n|---|---:|---:|")
    total = sum(parts.values())
    for name, value in parts.items():
        print(f"| {name} | {value:,.0f} | {100 * value / total:.0f} |")
    print(f"| total | {total:,.0f} | 100 |")
    print(f"wall on {args.cores} cores: {total / args.cores / 3600:.2f} h")


if __name__ == "__main__":
    main()
