"""`speechmerge finetune`: the command line's settings into one expert or a baseline, and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from speechmerge.errors import SpeechmergeError

BASELINES = ("joint", "sequential")


def run_finetune_command(
    base: str,
    output: Path,
    sources: list[Path],
    filters: dict,
    settings: dict,
    baseline: Optional[str],
    force: bool,
    progress: bool,
) -> Path:
    """Make what the command asks for; print what it cost and what it reached."""
    from speechmerge.training import (
        DataSelection,
        expert_groups,
        finetune,
        read_training_record,
        train_joint,
        train_sequential,
        training_config,
    )

    if baseline is not None and baseline not in BASELINES:
        raise SpeechmergeError(f"--baseline {baseline!r}: choose {' or '.join(BASELINES)}")
    config = training_config(**settings)
    selection = DataSelection(
        sources=tuple(sources),
        languages=tuple(filters["languages"]),
        tasks=tuple(filters["tasks"]),
        domains=tuple(filters["domains"]),
    )
    if baseline is None:
        made = finetune(base, selection, output, config, force=force, progress=progress)
    else:
        make = train_joint if baseline == "joint" else train_sequential
        made = make(base, expert_groups(selection), output, config, force=force, progress=progress)
    print_record(read_training_record(made), made)
    return made


def print_record(record, directory: Path) -> None:
    """A short table: data, steps, validation loss before and after, time."""
    from rich.console import Console
    from rich.table import Table

    result, timing = record.result, record.timing
    table = Table(show_header=False)
    table.add_row("base", record.base)
    table.add_row("mode", f"{record.config.mode} ({record.environment['device']}, {record.environment['precision']})")
    for summary in record.data_summary:
        table.add_row(
            "train / validation",
            f"{summary['train']['utterances']} / {summary['validation']['utterances']} utterances ({summary['validation_source']})",
        )
    table.add_row(
        "steps",
        f"{result['steps_done']} of {record.config.steps}{' (stopped early)' if result['stopped_early'] else ''}; best at {result['best_step']}",
    )
    if result.get("base_validation_loss") is not None:
        table.add_row(
            "validation loss",
            f"{result['base_validation_loss']:.4f} (start) -> {result['best_validation_loss']:.4f} (best)",
        )
    table.add_row("seconds", ", ".join(f"{key} {value:.1f}" for key, value in timing.items() if value is not None))
    console = Console(stderr=True)
    console.print(f"{record.kind}: {directory}", highlight=False, soft_wrap=True)
    console.print(table)
