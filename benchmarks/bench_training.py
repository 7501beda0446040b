"""What an expert costs and gains: fine-tune the built-in Whisper base one way, evaluate it against the base.

For one language and task of a built corpus, one run: train an expert (`speechmerge.training.finetune`,
progress off) in a mode with given steps, learning rate and batch, then decode the base and the
expert on that language's test sentences (`general`: the style trained on, other sentences;
`heldout`: questions, dialogue, headlines, instructions, never trained on) and on English
(what the base keeps), greedy, with the transformers backend. Appends one JSON line to the
results file: settings, the training record's timings, and each score of the base and the
expert. Decoding goes through the prediction and encoder-output caches, so the base is decoded
once per clip however many runs share it.

    python benchmarks/bench_training.py --corpus ~/.cache/speechmerge/corpus/multilingual-demo-seed0 \\
        --language es --task transcribe --mode decoder --steps 30 --lr 3e-5 \\
        --work /work/runs/training --results /work/runs/training/results.jsonl

`--table RESULTS` prints the results file as the Markdown table of docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections import defaultdict
from pathlib import Path


def scores(model, corpus: Path, language: str, task: str) -> dict[str, float]:
    """`{"es/transcribe/general": WER, ...}` on the test split, plus English transcription."""
    from speechmerge.evaluation.api import LabelFilter, evaluate

    metrics = ("bleu", "chrf") if task == "translate" else ("wer",)
    found = {}
    for lang, tsk, names in ((language, task, metrics), ("en", "transcribe", ("wer",))):
        result = evaluate(model, [corpus], labels=LabelFilter(language=(lang,), task=(tsk,), split=("test",)))
        for name in names:
            found.update({f"{key} {name}": round(value, 4) for key, value in result.scores(name, split="test").items()})
    return found


def dense_copy(adapter: Path, base: str, output: Path) -> Path:
    """The base with a LoRA expert's adapters folded in (PEFT's merge_and_unload), as a Whisper directory to decode."""
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.resolve import resolve_model_dir
    from speechmerge.checkpoints.whisper import PROCESSOR_FILES

    base_dir = resolve_model_dir(base)
    model = WhisperForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    shutil.rmtree(output, ignore_errors=True)
    merged.save_pretrained(output)
    for name in PROCESSOR_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, output / name)
    return output


def run(args) -> dict:
    import torch

    from speechmerge.training import DataSelection, finetune, read_training_record, training_config

    torch.set_num_threads(args.threads)
    mode = args.mode + (f"{args.encoder_layers}" if args.encoder_layers else "")
    name = f"{args.language}-{args.task}-{mode}-s{args.steps}-lr{args.lr:g}-b{args.batch_size}-seed{args.seed}"
    output = Path(args.work) / name
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(f"{output}.partial", ignore_errors=True)
    config = training_config(
        mode=args.mode,
        encoder_layers=args.encoder_layers,
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        patience=args.patience,
        seed=args.seed,
        lora_encoder=not args.lora_decoder_only,
    )
    selection = DataSelection(sources=(Path(args.corpus),), languages=(args.language,), tasks=(args.task,))
    started = time.perf_counter()
    finetune(args.base, selection, output, config, progress=False)
    wall = time.perf_counter() - started
    record = read_training_record(output)
    evaluated = dense_copy(output, args.base, Path(f"{output}-dense")) if args.mode == "lora" else output
    row = {
        "name": name,
        "language": args.language,
        "task": args.task,
        "mode": mode + ("-decoder" if args.lora_decoder_only and args.mode == "lora" else ""),
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_utterances": record.data_summary[0]["train"]["utterances"],
        "steps_done": record.result["steps_done"],
        "best_step": record.result["best_step"],
        "base_validation_loss": record.result["base_validation_loss"],
        "best_validation_loss": record.result["best_validation_loss"],
        "wall_seconds": round(wall, 1),
        **record.timing,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "base": scores(args.base, Path(args.corpus), args.language, args.task),
        "expert": scores(evaluated, Path(args.corpus), args.language, args.task),
    }
    if evaluated != output:
        shutil.rmtree(evaluated, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(output, ignore_errors=True)
    with open(args.results, "a") as results:
        results.write(json.dumps(row) + "\n")
    return row


def table(path: Path) -> str:
    """One row per setting (medians over its runs): cost, then each score as base -> expert."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    groups = defaultdict(list)
    for row in rows:
        groups[(row["language"], row["task"], row["mode"], row["steps"], row["lr"], row["batch_size"])].append(row)
    lines = [
        "| language task | mode | steps | lr | batch | runs | best step | train s | s/step wall / CPU | load | test general | test held-out style | English WER general / held-out |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (language, task, mode, steps, lr, batch), group in groups.items():

        def median(field, group=group):
            present = [r.get(field) for r in group if r.get(field) is not None]
            return statistics.median(present) if present else None

        def change(domain: str, language=language, task=task, group=group) -> str:
            metrics = ("wer",) if task == "transcribe" else ("bleu", "chrf")
            shown = []
            for metric in metrics:
                key = f"{language}/{task}/{domain} {metric}"
                if all(key in r["base"] for r in group):
                    base, expert = (statistics.median(r[side][key] for r in group) for side in ("base", "expert"))
                    shown.append(
                        f"{base:.3f} -> {expert:.3f}" if metric == "wer" else f"{metric} {base:.1f} -> {expert:.1f}"
                    )
            return "; ".join(shown) or "-"

        english = " / ".join(
            f"{statistics.median(r['expert'][f'en/transcribe/{d} wer'] for r in group):.3f}"
            for d in ("general", "heldout")
        )
        cpu = median("median_step_cpu_seconds")
        lines.append(
            f"| {language} {task} | {mode} | {steps} | {lr:g} | {batch} | {len(group)} | {median('best_step'):g} "
            f"| {median('train_step_seconds_total'):.0f} | {median('median_step_seconds'):.1f} / {'-' if cpu is None else f'{cpu:.1f}'} "
            f"| {median('load_average_1min'):.1f} | {change('general')} | {change('heldout')} | {english} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, help="print a results file as Markdown and exit")
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--base", default="builtin:whisper-base")
    parser.add_argument("--language", default="es")
    parser.add_argument("--task", default="transcribe")
    parser.add_argument("--mode", default="decoder")
    parser.add_argument(
        "--lora-decoder-only", action="store_true", help="LoRA adapters in the decoder only (encoder outputs cached)"
    )
    parser.add_argument("--encoder-layers", type=int, help="with --mode top_encoder: top encoder layers that train")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/speechmerge-bench-training"))
    parser.add_argument("--results", type=Path, default=Path("/tmp/speechmerge-bench-training/results.jsonl"))
    parser.add_argument("--keep", action="store_true", help="keep the expert directory")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
