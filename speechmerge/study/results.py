"""`speechmerge results`: a study's scores (or jobs) from its store, filtered, as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.study.rows import ScoreRow
from speechmerge.study.scores import score_rows
from speechmerge.study.store import Store, store_path

FORMATS = ("table", "csv", "json")
STAGES = ("validation", "test")


def filter_rows(
    rows: list[ScoreRow],
    methods: list[str] | None,
    stage: str | None,
    metrics: list[str] | None,
    kinds: list[str] | None,
) -> list[ScoreRow]:
    def keep(row: ScoreRow) -> bool:
        return (
            (not methods or row.method in methods or row.model in methods)
            and (stage is None or row.stage == stage)
            and (not metrics or row.metric in metrics)
            and (not kinds or row.model_kind in kinds)
        )

    return [row for row in rows if keep(row)]


COLUMNS = (
    "model_kind",
    "model",
    "stage",
    "scope",
    "language",
    "task",
    "domain",
    "metric",
    "value",
    "utterances",
    "selected",
    "setting",
    "job",
)


def render(rows: list[ScoreRow], fmt: str) -> str:
    """Rows as CSV or JSON text (the table format is printed by `print_results`)."""
    if fmt == "json":
        return json.dumps([row.model_dump(mode="json") for row in rows], indent=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        data = row.model_dump(mode="json")
        writer.writerow([json.dumps(data[c], sort_keys=True) if c == "setting" else data[c] for c in COLUMNS])
    return buffer.getvalue()


def open_store(target: Path) -> Store:
    path = store_path(target)
    if not path.is_file():
        raise SpeechmergeError(f"{target}: no study store ({path.name}) here; give a study folder or its .sqlite file")
    return Store(path, create=False)


def print_results(
    target: Path,
    methods: list[str] | None,
    stage: str | None,
    metrics: list[str] | None,
    kinds: list[str] | None,
    fmt: str,
    jobs: bool,
    every_job: bool,
) -> None:
    """`speechmerge results`: scores (or jobs) of a study, filtered, as a table, CSV or JSON."""
    from rich.console import Console
    from rich.table import Table

    if fmt not in FORMATS:
        raise SpeechmergeError(f"--format {fmt!r}: choose {', '.join(FORMATS)}")
    if stage is not None and stage not in STAGES:
        raise SpeechmergeError(f"--stage {stage!r}: choose validation or test")
    store = open_store(target)
    console = Console()
    if jobs:
        records = store.jobs(planned_only=not every_job)
        if fmt != "table":
            keys = (
                "key",
                "kind",
                "name",
                "status",
                "seconds",
                "cpu_seconds",
                "started",
                "finished",
                "model_path",
                "error",
            )
            print(
                json.dumps([{k: r[k] for k in keys} for r in records], indent=1)
                if fmt == "json"
                else _jobs_csv(records, keys),
                end="",
            )
            return
        table = Table(
            "job", "kind", "status", "seconds", "CPU s", "runs", "error", title=f"jobs of {store.path.parent}"
        )
        for r in records:
            runs = len(store.executions(r["key"]))
            table.add_row(
                r["name"],
                r["kind"],
                r["status"],
                _num(r["seconds"]),
                _num(r["cpu_seconds"]),
                str(runs),
                (r["error"] or "")[:80],
            )
        console.print(table)
        return
    rows = filter_rows(score_rows(store, planned_only=not every_job), methods, stage, metrics, kinds)
    if fmt != "table":
        print(render(rows, fmt), end="" if fmt == "csv" else "\n")
        return
    if not rows:
        console.print("no scores match (finished jobs only; try without filters, or --jobs to see what ran)")
        return
    table = Table(
        "model", "kind", "stage", "scope", "group", "metric", "value", "n", title=f"scores of {store.path.parent}"
    )
    for row in rows:
        mark = "" if row.selected else " (not selected)"
        table.add_row(
            row.model + mark,
            row.model_kind,
            row.stage,
            row.scope,
            f"{row.language}/{row.task}/{row.domain}",
            row.metric,
            f"{row.value:.4g}",
            str(row.utterances),
        )
    console.print(table)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _jobs_csv(records: list[dict], keys: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys)
    writer.writerows([[r[k] for k in keys] for r in records])
    return buffer.getvalue()
