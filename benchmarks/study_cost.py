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

    python benchmarks/study_cost.py recipes/multilingual.yaml --costs quiet=1.5,0.46,0.24,2.3 --costs loaded=...
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


def parse_profile(text: str) -> tuple[str, tuple[float, ...]]:
    name, _, values = text.partition("=")
    numbers = values.split(",")
    if len(numbers) != 4:
        raise argparse.ArgumentTypeError(f"--costs {text!r}: expected NAME=STEP,ENCODE,DECODE,MERGE (CPU seconds)")
    return name, tuple(float(x) for x in numbers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument(
        "--costs",
        type=parse_profile,
        action="append",
        required=True,
        help="NAME=STEP,ENCODE,DECODE,MERGE: CPU s per training step of the recipe's mode, per clip through the "
        "encoder, per decode (clip x task), per expert per merge; repeat for several sets of unit costs",
    )
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    counts = study_counts(args.recipe)
    print(f"{args.recipe}: {counts['experts']} experts ({counts['mode']}), baselines {counts['baselines'] or 'none'}")
    print(
        f"  training steps {counts['steps']}; clips encoded: training {counts['training clips']}, "
        f"evaluation {counts['evaluation clips']}"
        + (f" (x models: {sum(counts['clips encoded per model'].values())})" if counts["top_encoder"] else "")
    )
    for kind, decodes in counts["decodes"].items():
        print(f"  {kind}: {counts['models scored'][kind]} models, {decodes} decodes")
    print(f"  merges {counts['merges']}")
    profiles = [(name, cpu_seconds(counts, *costs)) for name, costs in args.costs]
    print("| part | " + " | ".join(f"CPU s ({name})" for name, _ in profiles) + " |")
    print("|---|" + "---:|" * len(profiles))
    for part in profiles[0][1]:
        print(f"| {part} | " + " | ".join(f"{parts[part]:,.0f}" for _, parts in profiles) + " |")
    totals = [sum(parts.values()) for _, parts in profiles]
    print("| total | " + " | ".join(f"{t:,.0f}" for t in totals) + " |")
    print(f"| wall on {args.cores} cores | " + " | ".join(f"{t / args.cores / 3600:.2f} h" for t in totals) + " |")


if __name__ == "__main__":
    main()
