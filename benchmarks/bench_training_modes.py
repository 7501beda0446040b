"""What one optimiser step costs in each training mode, side by side on the same batches.

For a base Whisper (default: the built-in whisper-base) and the training clips of one language and
task of a built corpus, it builds every mode's trainable model and encoder side as `finetune` does
(`training.api._trainable_model`, `_encoder_side`; the once-per-clip fill timed and written into a
fresh cache folder), then runs `training.loop._step` round-robin, one step of each mode per round,
so a change in the machine's load hits every mode alike. Reports, per mode, the median wall and CPU
seconds per step over the rounds (the first round, warm-up, left out), the fill's seconds per clip,
the number of trainable weights, and the 1-minute load average before and after.

    python benchmarks/bench_training_modes.py --corpus ~/.cache/speechmerge/corpus/multilingual-demo-seed0 \\
        --language es --modes full,decoder,top_encoder:1,top_encoder:2 --rounds 6 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def mode_settings(spec: str) -> dict:
    """`top_encoder:2` -> {mode: top_encoder, encoder_layers: 2}; `decoder` -> {mode: decoder}."""
    mode, _, layers = spec.partition(":")
    return {"mode": mode, **({"encoder_layers": int(layers)} if layers else {})}


def prepared(spec: str, base, data, train_targets, pad_id: int, args, accelerator) -> dict:
    """A mode's model, optimiser, scheduler and run data, with the seconds its cache fill took."""
    import torch
    from transformers import get_scheduler

    from speechmerge.training.api import _encoder_side, _trainable_model, check_encoder_layers
    from speechmerge.training.config import training_config
    from speechmerge.training.loop import RunData

    config = training_config(
        **mode_settings(spec), steps=args.rounds, batch_size=args.batch_size, learning_rate=1e-5, warmup_ratio=0.0
    )
    check_encoder_layers(config, base)
    torch.manual_seed(0)
    model, _ = _trainable_model(base.directory, config)
    started = time.perf_counter()
    side = _encoder_side(model, base.directory, data, config, accelerator.device, progress=False)
    fill = time.perf_counter() - started
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate)
    scheduler = get_scheduler("constant", optimizer)
    run_data = RunData(data.train, train_targets, [], [], side, pad_id)
    return dict(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data=run_data,
        parameters=parameters,
        fill_seconds=fill,
        trainable=sum(p.numel() for p in parameters),
    )


def run(args) -> dict:
    import torch

    from speechmerge.checkpoints.converted import models_dir

    os.environ.setdefault("SPEECHMERGE_MODEL_CACHE", str(models_dir()))  # keep the converted model
    os.environ["SPEECHMERGE_CACHE"] = tempfile.mkdtemp(prefix="bench-modes-cache-")  # every fill from scratch
    from speechmerge.checkpoints.tokenizer import load_tokenizer
    from speechmerge.training.api import Base, _accelerator
    from speechmerge.training.config import TrainingConfig
    from speechmerge.training.labels import PromptTokens, target_sequence
    from speechmerge.training.loop import _step
    from speechmerge.training.selection import DataSelection, TrainingData, training_data

    torch.set_num_threads(args.threads)
    base = Base.open(args.base)
    selection = DataSelection(sources=(args.corpus,), languages=(args.language,), tasks=(args.task,))
    train = training_data(selection, 0.1, 0).train[: args.clips]
    data = TrainingData(train, [], "none")
    tokenizer = load_tokenizer(base.directory)
    prompts = PromptTokens.of(tokenizer)
    max_length = int(base.checkpoint.config["max_target_positions"])
    targets = [target_sequence(tokenizer, prompts, u, max_length) for u in train]
    accelerator, _ = _accelerator(TrainingConfig(device="cpu"))
    load_before = os.getloadavg()[0]
    modes = {spec: prepared(spec, base, data, targets, prompts.end, args, accelerator) for spec in args.modes}
    wall = {spec: [] for spec in modes}
    cpu = {spec: [] for spec in modes}
    for step in range(args.rounds):
        for spec, m in modes.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            _step(
                m["model"], m["optimizer"], m["scheduler"], accelerator, m["data"], m["config"], step, m["parameters"]
            )
            wall[spec].append(time.perf_counter() - started)
            cpu[spec].append(time.process_time() - started_cpu)
            print(
                f"round {step} {spec}: {wall[spec][-1]:.2f} s wall, {cpu[spec][-1]:.2f} s CPU",
                file=sys.stderr,
                flush=True,
            )
    rows = {
        spec: {
            "median_step_seconds": round(statistics.median(wall[spec][1:]), 3),
            "median_step_cpu_seconds": round(statistics.median(cpu[spec][1:]), 3),
            "step_seconds": [round(s, 3) for s in wall[spec]],
            "fill_seconds_per_clip": round(m["fill_seconds"] / len(train), 3) if m["fill_seconds"] > 0.01 else 0.0,
            "trainable_weights": m["trainable"],
        }
        for spec, m in modes.items()
    }
    return {
        "base": args.base,
        "clips": len(train),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "modes": rows,
    }


def table(report: dict) -> str:
    """The Markdown table of docs/training.md."""
    full = report["modes"].get("full", {}).get("median_step_seconds")
    lines = [
        "| mode | trainable weights | s/step wall (median) | s/step CPU | vs full | fill s/clip (once) |",
        "|---|---|---|---|---|---|",
    ]
    for spec, row in report["modes"].items():
        ratio = f"{full / row['median_step_seconds']:.1f}x cheaper" if full and spec != "full" else "-"
        lines.append(
            f"| {spec} | {row['trainable_weights'] / 1e6:.1f} M | {row['median_step_seconds']:.2f} "
            f"| {row['median_step_cpu_seconds']:.2f} | {ratio} | {row['fill_seconds_per_clip']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--base", default="builtin:whisper-base")
    parser.add_argument("--language", default="es")
    parser.add_argument("--task", default="transcribe")
    parser.add_argument("--modes", type=lambda s: s.split(","), default="full,decoder,top_encoder:1,top_encoder:2")
    parser.add_argument("--rounds", type=int, default=6, help="steps per mode (the first is left out of the median)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=16, help="training clips used (and filled into the cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the report as JSON here too")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    print(table(report))


if __name__ == "__main__":
    main()
