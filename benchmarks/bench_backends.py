"""Decoding backends on the same clips: speed, agreement, batch size, the encoder-output cache,
decoding frozen-encoder models from cached encoder outputs, and fully fine-tuned models.

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
   frozen-encoder expert is decoded on every clip by each path of `CACHED_PATHS` (transformers,
   torch and CTranslate2 decoders on the same cached float32 encoder outputs), interleaved
   `--repeats` times: median seconds per clip (model loading and the one-time CTranslate2 export
   excluded; the export is timed on its own), the ratio to the transformers path, the share of
   clips (over every expert) whose text is the transformers path's, and macro WER / BLEU with
   their differences; the audio window's agreement is with the full window of the same backend;
5. fully fine-tuned experts (encoder perturbed too, `FULL_PATHS`): every path runs the model's
   own encoder (transformers and torch in float32, CTranslate2 in each weight type), measured
   as in 4;
6. the audio window's margin: the base (torch float32) from the full window and from the audio
   window at each of `WINDOW_MARGINS`, on the same encoder outputs: identical texts, s/clip.

    python benchmarks/bench_backends.py --clips 6 --repeats 3 --write-docs

`--parts` measures only some of these (default: all). `--write-docs` rewrites this script's
sections of docs/performance.md (the first three parts' together, each later part's on its own).
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
PARTS = ("backends", "batch", "cache", "cached", "full", "window")


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
        "ctranslate2 int8": dict(backend="ctranslate2", quantization="int8", encoder_cache=False),
        "ctranslate2 float32": dict(backend="ctranslate2", quantization="float32", encoder_cache=False),
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


def encoder_cache_speedup(model_dir: Path, data, experts: int, threads: int, work: Path) -> dict:
    models = [model_dir, *perturbed_experts(model_dir, experts, work, ("model.decoder.",))]
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
    "ctranslate2 float32": dict(backend="ctranslate2", quantization="float32"),
    "ctranslate2 int8": dict(backend="ctranslate2", quantization="int8"),
    "torch float32, batch 32": dict(backend="torch", batch_size=32),
    "ctranslate2 float32, batch 32": dict(backend="ctranslate2", quantization="float32", batch_size=32),
    "torch float32, audio window": dict(backend="torch", encoder_window="audio"),
    "torch float32, attending over E": dict(backend="torch", cross_attention="encoder"),
    "torch float32, attending over E, batch 16": dict(backend="torch", cross_attention="encoder", batch_size=16),
}
WINDOW_REFERENCE = {"torch float32, audio window": "torch float32"}
# A fully fine-tuned model runs its own encoder: the transformers path without a shared cache against
# CTranslate2's encoder (and decoder) in each weight type, and the torch decoder after the torch encoder.
FULL_PATHS = {
    "transformers float32 (reference)": dict(backend="transformers", encoder_cache=False),
    "torch float32": dict(backend="torch", encoder_cache=False),
    "ctranslate2 float32": dict(backend="ctranslate2", quantization="float32", encoder_cache=False),
    "ctranslate2 int8": dict(backend="ctranslate2", quantization="int8", encoder_cache=False),
}


def perturbed_experts(model_dir: Path, count: int, root: Path, prefixes: tuple[str, ...]) -> list[Path]:
    """Copies of the model whose tensors under `prefixes` get small Gaussian noise (seeded per copy)."""
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
                if name.startswith(prefixes) and tensor.is_floating_point():
                    state[name] = tensor + 1e-3 * tensor.std() * torch.randn(tensor.shape, generator=generator)
            save_file(state, file, metadata={"format": "pt"})
        experts.append(target)
    return experts


def conversion_seconds(models: list[Path], paths: dict) -> dict:
    """Seconds to export each model to CTranslate2 once per weight type the paths use (median over models)."""
    from speechmerge.evaluation.ct2_backend import exported_ct2_dir
    from speechmerge.evaluation.model import open_eval_model

    out = {}
    for decode in paths.values():
        if decode["backend"] == "ctranslate2":
            seconds = []
            for model in models:
                start = time.perf_counter()
                exported_ct2_dir(open_eval_model(model), decode["quantization"])
                seconds.append(time.perf_counter() - start)
            out[decode["quantization"]] = statistics.median(seconds)
    return out


def compare_paths(models: list[Path], data, paths: dict, window_reference: dict, repeats: int, threads: int) -> dict:
    """Each model decoded by each path, interleaved `repeats` times: median s/clip, the ratio to the first
    path, identical texts (against the first path, or `window_reference`'s), macro WER / BLEU and their
    differences from the compared path."""
    times = {name: [] for name in paths}
    results = {name: {} for name in paths}
    for _ in range(repeats):
        for index, model in enumerate(models):
            for name, decode in paths.items():
                result = run(model, data, threads=threads, **decode)
                if decode.get("encoder_cache", True):
                    assert result.timing.encoder_batches == 0, "the encoder ran: the cache was not used"
                results[name][index] = result
                times[name].append(per_clip(result))
    reference_name = next(iter(paths))
    reference = statistics.median(times[reference_name])
    out = {}
    for name, by_model in results.items():
        compared = window_reference.get(name, reference_name)
        same = sum(
            a.hypothesis == b.hypothesis
            for index, result in by_model.items()
            for a, b in zip(result.predictions, results[compared][index].predictions)
        )
        wer = statistics.mean(macro(result, "wer") for result in by_model.values())
        bleu = statistics.mean(macro(result, "bleu") for result in by_model.values())
        out[name] = {
            "seconds_per_clip": statistics.median(times[name]),
            "all_seconds_per_clip": times[name],
            "speedup": reference / statistics.median(times[name]),
            "compared_with": compared,
            "identical_texts": same,
            "clips": sum(len(result.predictions) for result in by_model.values()),
            "macro_wer": wer,
            "macro_bleu": bleu,
            "wer_difference": 100 * (wer - statistics.mean(macro(r, "wer") for r in results[compared].values())),
            "bleu_difference": bleu - statistics.mean(macro(r, "bleu") for r in results[compared].values()),
        }
    return out


def cached_decoding(model_dir: Path, data, experts: int, repeats: int, threads: int, work: Path) -> dict:
    """Frozen-encoder experts decoded from the base's cached encoder outputs by each path."""
    models = perturbed_experts(model_dir, experts, work / "cached", ("model.decoder.",))
    os.environ["SPEECHMERGE_CACHE"] = str(work / "cache-cached")
    run(model_dir, data, threads=threads)  # fills the encoder-output cache
    conversions = conversion_seconds(models, CACHED_PATHS)
    return {
        "paths": compare_paths(models, data, CACHED_PATHS, WINDOW_REFERENCE, repeats, threads),
        "conversion_seconds": conversions,
    }


def full_decoding(model_dir: Path, data, experts: int, repeats: int, threads: int, work: Path) -> dict:
    """Fully fine-tuned experts (encoder perturbed too): each path runs the model's own encoder."""
    models = perturbed_experts(model_dir, experts, work / "full", ("model.",))
    os.environ["SPEECHMERGE_CACHE"] = str(work / "cache-full")
    conversions = conversion_seconds(models, FULL_PATHS)
    return {"paths": compare_paths(models, data, FULL_PATHS, {}, repeats, threads), "conversion_seconds": conversions}


WINDOW_MARGINS = (1.0, 3.0, 6.0, 10.0)


def window_margins(model_dir: Path, data, margins: tuple[float, ...], threads: int, work: Path) -> dict:
    """The base decoded by the torch backend (float32) from the full 1500 encoder positions and from
    the audio window at each margin (seconds after the batch's longest clip), batch by batch on the
    same encoder outputs: identical texts against the full window, and decoding seconds."""
    from speechmerge.evaluation.backend import DecodeSettings, make_backend, max_new_tokens
    from speechmerge.evaluation.decoding import audio_window, plan_batches
    from speechmerge.evaluation.model import open_eval_model

    os.environ["SPEECHMERGE_CACHE"] = str(work / "cache-window")
    model = open_eval_model(model_dir)
    backend = make_backend(model, "torch", "float32", threads, True)
    settings = DecodeSettings(beam_size=1, max_new_tokens=max_new_tokens(model, None))
    utterances = [u for group in data for u in group]
    texts = {margin: [] for margin in (None, *margins)}
    seconds = dict.fromkeys(texts, 0.0)
    for batch in plan_batches(utterances, range(len(utterances)), 8):
        members = [utterances[i] for i in batch]
        encoded = backend.encode([u.audio for u in members])
        for margin in texts:
            window = encoded if margin is None else encoded[:, : audio_window([u.audio for u in members], 1500, margin)]
            start = time.perf_counter()
            texts[margin] += backend.decode(window, [u.language for u in members], members[0].task, settings)
            seconds[margin] += time.perf_counter() - start
    full = texts[None]
    return {
        "clips": len(full),
        "full_seconds_per_clip": seconds[None] / len(full),
        "margins": {
            str(margin): {
                "identical_texts": sum(a == b for a, b in zip(texts[margin], full)),
                "seconds_per_clip": seconds[margin] / len(full),
            }
            for margin in margins
        },
    }


def window_markdown(report: dict) -> str:
    window = report["window"]
    lines = [
        "### The audio window's margin",
        "",
        f"The built-in base, torch float32, on the same {window['clips']} clips and encoder outputs, batch 8: the full "
        "1500 positions against the audio window with each margin (seconds kept after the batch's longest clip) on "
        f"{load_line(report, 'window')}.",
        "",
        f"    {report['command']}",
        "",
        "| margin (s) | identical texts (vs the full window) | s/clip |",
        "|---:|---:|---:|",
        f"| full window | {window['clips']}/{window['clips']} | {window['full_seconds_per_clip']:.3f} |",
    ]
    for margin, row in window["margins"].items():
        lines.append(
            f"| {float(margin):g} | {row['identical_texts']}/{window['clips']} "
            f"({100 * row['identical_texts'] / window['clips']:.1f} %) | {row['seconds_per_clip']:.3f} |"
        )
    return "\n".join(lines)


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


def paths_table(rows: dict) -> list[str]:
    lines = [
        "| path | s/clip | speed-up vs transformers | identical texts | vs | macro WER % | Δ WER | BLEU (es→en) | Δ BLEU |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['seconds_per_clip']:.3f} | {row['speedup']:.2f}× | "
            f"{row['identical_texts']}/{row['clips']} ({100 * row['identical_texts'] / row['clips']:.1f} %) | "
            f"{row['compared_with'].removesuffix(' (reference)')} | {100 * row['macro_wer']:.2f} | "
            f"{row['wer_difference']:+.2f} | {row['macro_bleu']:.2f} | {row['bleu_difference']:+.2f} |"
        )
    return lines


def conversion_line(seconds: dict) -> str:
    parts = [f"{quantization} {value:.1f} s" for quantization, value in seconds.items()]
    return (
        "Export to CTranslate2, once per model and weight type (cached by content key; median over the experts, "
        "not in s/clip): " + ", ".join(parts) + "."
    )


def load_line(report: dict, part: str) -> str:
    before, after = report[f"load_{part}"]
    return (
        f"{report['machine']}, {report['threads']} threads, load average {before:.1f} before and {after:.1f} after "
        "this part (`os.getloadavg()`; other engineers' jobs may share the 2 cores)"
    )


def cached_markdown(report: dict) -> str:
    cached = report["cached"]
    lines = [
        "### Frozen-encoder models from cached encoder outputs",
        "",
        f"The base fills the encoder-output cache, then {report['experts']} frozen-encoder experts (the base's decoder "
        f"with small Gaussian noise) are decoded on the same {report['clips']} clips ({report['clip_description']}) "
        f"by each path (batch 8 unless the path names another; batches never mix languages or tasks, so a "
        f"batch holds at most one group's clips; greedy, interleaved; s/clip: median over experts × {report['repeats']} repeats, "
        f"decoding only, model loading excluded) on {load_line(report, 'cached')}. Identical texts: clips over every "
        "expert whose text is the reference's (for the audio window: the full window's of the same backend and "
        "weights); Δ: the difference of the mean macro WER (points) and BLEU from that path's.",
        "",
        f"    {report['command']}",
        "",
        *paths_table(cached["paths"]),
        "",
        conversion_line(cached["conversion_seconds"]),
    ]
    return "\n".join(lines)


def full_markdown(report: dict) -> str:
    full = report["full"]
    lines = [
        "### Fully fine-tuned models (their own encoder)",
        "",
        f"{report['experts']} experts with every weight of the base perturbed (encoder included, so no model shares "
        f"its encoder outputs), on the same {report['clips']} clips, each path running the model's own encoder "
        f"(batch 8, greedy, interleaved, median over experts × {report['repeats']} repeats, decoding only) on "
        f"{load_line(report, 'full')}.",
        "",
        f"    {report['command']}",
        "",
        *paths_table(full["paths"]),
        "",
        conversion_line(full["conversion_seconds"]),
    ]
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
        for part, measure in (("cached", cached_decoding), ("full", full_decoding)):
            if part in args.parts:
                load = [os.getloadavg()[0]]
                measured[part] = measure(model_dir, data, args.experts, args.repeats, args.threads, work)
                measured[f"load_{part}"] = load + [os.getloadavg()[0]]
        if "window" in args.parts:
            load = [os.getloadavg()[0]]
            measured["window"] = window_margins(model_dir, data, WINDOW_MARGINS, args.threads, work)
            measured["load_window"] = load + [os.getloadavg()[0]]
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
    if "full" in args.parts:
        texts.append(("full", full_markdown(report)))
    if "window" in args.parts:
        texts.append(("window", window_markdown(report)))
    for name, text in texts:
        print(text)
        if args.write_docs:
            write_section(ROOT / "docs" / "performance.md", "bench_backends", name, text)


if __name__ == "__main__":
    main()
