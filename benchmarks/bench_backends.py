"""Decoding backends on the same clips: speed, agreement, batch size, the encoder-output cache, and
decoding frozen-encoder models from cached encoder outputs.

On clips of the built-in demo corpus (test split, `general` domain; built if missing), with the
built-in whisper-base, greedy, all through `speechmerge.evaluation.evaluate` with the prediction
cache off:

1. backends: transformers (float32, the reference) against ctranslate2 int8 and float32 on the
   same clips, interleaved `--repeats` times: median seconds per clip (decoding only, model
   loading excluded), the speed ratio, the share of clips whose text is identical to the
   reference's, and each backend's WER / BLEU (and the difference);
2. batch size: the transformers backend at each of `--batch-sizes` (clips decoded together);
3. encoder cache: the base and `--experts` frozen-encoder experts (copies of the base with the
   decoder perturbed, as decoder-only fine-tuning leaves the encoder untouched) evaluated on
   the same clips with the encoder-output cache off, then on (cold: the first model fills it);
4. decoding from cached encoder outputs (issue 16): the base fills the encoder cache, then each
   frozen-encoder expert is decoded on every clip by each path of `CACHED_PATHS`, interleaved
   `--repeats` times: median seconds per clip (model loading excluded), the ratio to the
   transformers path, the share of clips (over every expert) whose text is the transformers
   path's, and macro WER / BLEU; the audio window's agreement is with the full window of the
   same backend and weights.

    python benchmarks/bench_backends.py --clips 6 --repeats 3 --write-docs

`--parts` measures only some of these (default: all). `--write-docs` rewrites this script's
sections of docs/performance.md (the first three parts' together, the fourth's on its own).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, machine_description, write_section  # noqa: E402

LANGUAGES = ("en", "es", "de", "fr")
PARTS = ("backends", "batch", "cache", "cached")


def clips(corpus_dir: Path, per_language: int, translate: bool):
    """The first `per_language` test clips of each language (transcribe), plus Spanish translation."""
    from speechmerge.data.corpus import open_corpus

    corpus = open_corpus(corpus_dir)
    chosen = []
    for language in LANGUAGES:
        chosen.append(corpus.utterances(language, "transcribe", "general", "test")[:per_language])
    if translate:
        chosen.append(corpus.utterances("es", "translate", "general", "test")[:per_language])
    return chosen


def run(model, data, **decode):
    from speechmerge.evaluation.api import evaluate
    from speechmerge.evaluation.options import DecodeOptions, EvalOptions

    return evaluate(model, data, EvalOptions(decode=DecodeOptions(**decode), prediction_cache=False))


def per_clip(result) -> float:
    return result.timing.decode_seconds / result.timing.utterances


def macro(result, metric: str) -> float:
    values = [g.metric(metric) for g in result.groups if g.metric(metric) is not None]
    return statistics.mean(values) if values else float("nan")


def compare_backends(model, data, repeats: int, threads: int) -> dict:
    configs = {
        "transformers float32": dict(backend="transformers", encoder_cache=False),
        "ctranslate2 int8": dict(backend="ctranslate2", quantization="int8"),
        "ctranslate2 float32": dict(backend="ctranslate2", quantization="float32"),
    }
    for decode in configs.values():  # warm-up: CTranslate2 export, page cache
        run(model, [data[0][:1]], threads=threads, **decode)
    times = {name: [] for name in configs}
    results = {}
    for _ in range(repeats):
        for name, decode in configs.items():
            results[name] = run(model, data, threads=threads, **decode)
            times[name].append(per_clip(results[name]))
    reference = results["transformers float32"]
    out = {}
    for name, result in results.items():
        same = sum(a.hypothesis == b.hypothesis for a, b in zip(result.predictions, reference.predictions))
        out[name] = {
            "seconds_per_clip": statistics.median(times[name]),
            "all_seconds_per_clip": times[name],
            "speedup_vs_transformers": statistics.median(times["transformers float32"])
            / statistics.median(times[name]),
            "identical_texts": same,
            "clips": len(result.predictions),
            "macro_wer": macro(result, "wer"),
            "macro_bleu": macro(result, "bleu"),
        }
    return out


def batch_sweep(model, data, sizes: list[int], repeats: int, threads: int) -> dict:
    times = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            times[size].append(per_clip(run(model, data, batch_size=size, encoder_cache=False, threads=threads)))
    return {str(size): {"seconds_per_clip": statistics.median(values), "all": values} for size, values in times.items()}


def frozen_encoder_experts(model_dir: Path, count: int, root: Path) -> list[Path]:
    """Copies of the model whose decoder weights get small Gaussian noise (encoder untouched)."""
    import torch
    from safetensors.torch import load_file, save_file

    experts = []
    for index in range(count):
        target = root / f"expert{index}"
        shutil.copytree(model_dir, target)
        for file in target.glob("*.safetensors"):
            state = load_file(file)
            generator = torch.Generator().manual_seed(index)
            for name, tensor in state.items():
                if name.startswith("model.decoder.") and tensor.is_floating_point():
                    state[name] = tensor + 1e-3 * tensor.std() * torch.randn(tensor.shape, generator=generator)
            save_file(state, file, metadata={"format": "pt"})
        experts.append(target)
    return experts


def encoder_cache_speedup(model_dir: Path, data, experts: int, threads: int, work: Path) -> dict:
    models = [model_dir, *frozen_encoder_experts(model_dir, experts, work)]
    os.environ["SPEECHMERGE_CACHE"] = str(work / "cache-off")
    off = [run(m, data, encoder_cache=False, threads=threads) for m in models]
    os.environ["SPEECHMERGE_CACHE"] = str(work / "cache-on")
    on = [run(m, data, encoder_cache=True, threads=threads) for m in models]
    for a, b in zip(off, on):
        assert [p.hypothesis for p in a.predictions] == [p.hypothesis for p in b.predictions], (
            "the encoder cache changed an output"
        )
    seconds_off = [r.timing.decode_seconds for r in off]
    seconds_on = [r.timing.decode_seconds for r in on]
    return {
        "models": len(models),
        "clips": off[0].timing.utterances,
        "seconds_without_cache": seconds_off,
        "seconds_with_cache": seconds_on,
        "total_speedup": sum(seconds_off) / sum(seconds_on),
        "warm_speedup": statistics.median(seconds_off[1:]) / statistics.median(seconds_on[1:]),
        "identical_outputs": True,
    }


CACHED_PATHS = {
    "transformers float32 (reference)": dict(backend="transformers"),
    "torch float32": dict(backend="torch"),
    "torch int8": dict(backend="torch", quantization="int8"),
    "torch float32, audio window": dict(backend="torch", encoder_window="audio"),
    "torch int8, audio window": dict(backend="torch", quantization="int8", encoder_window="audio"),
}
WINDOW_REFERENCE = {
    "torch float32, audio window": "torch float32",
    "torch int8, audio window": "torch int8",
}


def cached_decoding(model_dir: Path, data, experts: int, repeats: int, threads: int, work: Path) -> dict:
    """Frozen-encoder experts decoded from the base's cached encoder outputs by each path."""
    models = frozen_encoder_experts(model_dir, experts, work / "cached")
    os.environ["SPEECHMERGE_CACHE"] = str(work / "cache-cached")
    run(model_dir, data, threads=threads)  # fills the encoder-output cache
    times = {name: [] for name in CACHED_PATHS}
    results = {name: {} for name in CACHED_PATHS}
    for _ in range(repeats):
        for index, expert in enumerate(models):
            for name, decode in CACHED_PATHS.items():
                result = run(expert, data, threads=threads, **decode)
                assert result.timing.encoder_batches == 0, "the encoder ran: the cache was not used"
                results[name][index] = result
                times[name].append(per_clip(result))
    reference_name = next(iter(CACHED_PATHS))
    reference = statistics.median(times[reference_name])
    out = {}
    for name, by_expert in results.items():
        compared = WINDOW_REFERENCE.get(name, reference_name)
        same = sum(
            a.hypothesis == b.hypothesis
            for index, result in by_expert.items()
            for a, b in zip(result.predictions, results[compared][index].predictions)
        )
        out[name] = {
            "seconds_per_clip": statistics.median(times[name]),
            "all_seconds_per_clip": times[name],
            "speedup": reference / statistics.median(times[name]),
            "compared_with": compared,
            "identical_texts": same,
            "clips": sum(len(result.predictions) for result in by_expert.values()),
            "macro_wer": statistics.mean(macro(result, "wer") for result in by_expert.values()),
            "macro_bleu": statistics.mean(macro(result, "bleu") for result in by_expert.values()),
        }
    return out


def markdown(report: dict) -> str:
    backends, sweep, cache = report["backends"], report["batch_sizes"], report["encoder_cache"]
    lines = [
        "## Decoding backends",
        "",
        f"Measured {report['date']} on {report['machine']}, {report['threads']} threads, load average "
        f"{report['load_before']:.1f} before the run (other engineers' jobs share the 2 cores; absolute times vary, "
        "ratios measured interleaved are steadier). Built-in whisper-base, greedy, "
        f"{report['clips']} clips of the demo corpus (test, general: {report['clip_description']}); "
        "batch size and encoder cache on the en and es transcription clips.",
        "",
        f"    {report['command']}",
        "",
        "| backend | s/clip (median of "
        + str(report["repeats"])
        + ") | speed-up vs transformers | identical texts | macro WER % | BLEU (es→en) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in backends.items():
        lines.append(
            f"| {name} | {row['seconds_per_clip']:.2f} | {row['speedup_vs_transformers']:.2f}× | "
            f"{row['identical_texts']}/{row['clips']} | {100 * row['macro_wer']:.2f} | {row['macro_bleu']:.2f} |"
        )
    lines += [
        "",
        "Batch size (transformers backend, clips decoded together; s/clip, median):",
        "",
        "| batch | " + " | ".join(sweep) + " |",
        "|---|" + "---:|" * len(sweep),
        "| s/clip | " + " | ".join(f"{row['seconds_per_clip']:.2f}" for row in sweep.values()) + " |",
        "",
        f"Encoder-output cache: the base and {cache['models'] - 1} frozen-encoder experts on the same {cache['clips']} clips "
        "(transformers, batch 8), decoding seconds per model:",
        "",
        "| | " + " | ".join(["base"] + [f"expert {i + 1}" for i in range(cache["models"] - 1)]) + " | total |",
        "|---|" + "---:|" * (cache["models"] + 1),
        "| cache off | "
        + " | ".join(f"{s:.1f}" for s in cache["seconds_without_cache"])
        + f" | {sum(cache['seconds_without_cache']):.1f} |",
        "| cache on (cold) | "
        + " | ".join(f"{s:.1f}" for s in cache["seconds_with_cache"])
        + f" | {sum(cache['seconds_with_cache']):.1f} |",
        "",
        f"Outputs identical with and without the cache; each model after the first decodes {cache['warm_speedup']:.1f}× faster, "
        f"{cache['total_speedup']:.2f}× for the {cache['models']} models together.",
    ]
    return "\n".join(lines)


def cached_markdown(report: dict) -> str:
    lines = [
        "### Frozen-encoder models from cached encoder outputs",
        "",
        f"The base fills the encoder-output cache, then {report['experts']} frozen-encoder experts are decoded on the "
        f"same {report['clips']} clips ({report['clip_description']}) by each path (batch 8, greedy, interleaved; s/clip: median over experts × {report['repeats']} "
        f"repeats, decoding only) on {report['machine']}, {report['threads']} threads, load average "
        f"{report['load_cached'][0]:.1f} before and {report['load_cached'][1]:.1f} after this part (5 engineers' jobs "
        "share the 2 cores). Identical texts: clips over every expert whose text is the reference's (for the audio window: "
        "the full window's of the same backend and weights).",
        "",
        f"    {report['command']}",
        "",
        "| path | s/clip | speed-up vs transformers | identical texts | vs | macro WER % | BLEU (es→en) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, row in report["cached"].items():
        lines.append(
            f"| {name} | {row['seconds_per_clip']:.3f} | {row['speedup']:.2f}× | "
            f"{row['identical_texts']}/{row['clips']} ({100 * row['identical_texts'] / row['clips']:.1f} %) | "
            f"{row['compared_with'].removesuffix(' (reference)')} | {100 * row['macro_wer']:.2f} | {row['macro_bleu']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:whisper-base")
    parser.add_argument(
        "--corpus", type=Path, default=None, help="a built corpus folder (default: build the multilingual demo corpus)"
    )
    parser.add_argument(
        "--clips", type=int, default=6, help="clips per language (en, es, de, fr; and es→en translation)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--experts", type=int, default=2, help="frozen-encoder experts for the encoder-cache measurement"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure (default: everything): backends, batch sizes, encoder cache, cached decoding",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite this script's section of docs/performance.md"
    )
    args = parser.parse_args()

    import torch

    from speechmerge.checkpoints.resolve import resolve_model_dir
    from speechmerge.data.corpus import build_corpus

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    load_before = os.getloadavg()[0]
    corpus = args.corpus or build_corpus("multilingual", "demo").directory
    data = clips(corpus, args.clips, translate=True)
    model_dir = resolve_model_dir(args.model)
    flat = [u for group in data for u in group]
    work = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    try:
        os.environ["SPEECHMERGE_CACHE"] = str(work / "cache")
        started = time.time()
        measured = {}
        if "backends" in args.parts:
            measured["backends"] = compare_backends(model_dir, data, args.repeats, args.threads)
        if "batch" in args.parts:
            measured["batch_sizes"] = batch_sweep(
                model_dir, data[:2], args.batch_sizes, max(1, args.repeats - 1), args.threads
            )
        if "cache" in args.parts:
            measured["encoder_cache"] = encoder_cache_speedup(model_dir, data[:2], args.experts, args.threads, work)
        if "cached" in args.parts:
            load_cached = [os.getloadavg()[0]]
            measured["cached"] = cached_decoding(model_dir, data, args.experts, args.repeats, args.threads, work)
            measured["load_cached"] = load_cached + [os.getloadavg()[0]]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "threads": args.threads,
        "load_before": load_before,
        "repeats": args.repeats,
        "clips": len(flat),
        "clip_description": f"{args.clips} each of {', '.join(LANGUAGES)} transcription and es→en translation, "
        f"{sum(u.duration for u in flat) / len(flat):.1f} s on average",
        "command": "python benchmarks/bench_backends.py " + " ".join(sys.argv[1:]),
        "minutes": (time.time() - started) / 60,
        "experts": args.experts,
        **measured,
    }
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    texts = []
    if {"backends", "batch", "cache"} <= set(args.parts):
        texts.append(("results", markdown(report)))
    if "cached" in args.parts:
        texts.append(("cached", cached_markdown(report)))
    for name, text in texts:
        print(text)
        if args.write_docs:
            write_section(ROOT / "docs" / "performance.md", "bench_backends", name, text)


if __name__ == "__main__":
    main()
