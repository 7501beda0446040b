"""What the `speechmerge data` commands print: corpus summaries and manifest checks, as rich tables."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from speechmerge.data.corpus import Corpus
from speechmerge.data.manifest import ManifestScan
from speechmerge.errors import SpeechmergeError


def print_corpus(corpus: Corpus, console: Console | None = None) -> None:
    """One row per manifest (labels, utterances, minutes), where the manifests are, what each domain is."""
    console = console or Console()
    console.print(f"{corpus.name} corpus: {corpus.directory}", highlight=False, soft_wrap=True)
    table = Table()
    for column in ("language", "task", "domain", "split", "utterances", "minutes"):
        table.add_column(column, justify="right" if column in ("utterances", "minutes") else "left", no_wrap=True)
    for info in sorted(corpus.index.manifests, key=lambda i: (i.language, i.domain, i.split, i.task)):
        table.add_row(
            info.language, info.task, info.domain, info.split, str(info.utterances), f"{info.seconds / 60:.1f}"
        )
    console.print(table)
    console.print(
        f"manifests: {corpus.directory / 'manifests'} (<language>.<domain>.<split>.<task>.jsonl)",
        highlight=False,
        soft_wrap=True,
    )
    for domain, description in corpus.index.domains.items():
        console.print(f"  [bold]{domain}[/]: {description}", highlight=False)


def print_scan(scan: ManifestScan, console: Console | None = None) -> None:
    """Every bad line, then a summary of the usable utterances; SpeechmergeError if any line is bad."""
    console = console or Console()
    for bad in scan.bad:
        console.print(f"[red]{scan.path}: {bad}[/]", highlight=False, soft_wrap=True)
    utterances = scan.utterances
    hours = sum(u.duration or 0.0 for u in utterances) / 3600
    counts = Counter((u.language, u.task, u.split or "-") for u in utterances)
    console.print(f"{scan.path}: {len(utterances)} usable utterances, {hours:.2f} h", highlight=False, soft_wrap=True)
    table = Table()
    for column in ("language", "task", "split", "utterances"):
        table.add_column(column, justify="right" if column == "utterances" else "left")
    for (language, task, split), count in sorted(counts.items()):
        table.add_row(language, task, split, str(count))
    console.print(table)
    if scan.bad:
        raise SpeechmergeError(
            f"{scan.path}: {len(scan.bad)} bad lines (listed above); fix them or read with --skip-bad to leave them out"
        )


def print_overlaps(corpus: Corpus, console: Console | None = None) -> None:
    """Vocabulary overlap of each evaluation manifest with the training text (speechmerge.data.stats)."""
    from speechmerge.data.stats import corpus_overlaps

    console = console or Console()
    console.print(f"vocabulary overlap with training text: {corpus.directory}", highlight=False, soft_wrap=True)
    table = Table()
    columns = (
        "language",
        "domain",
        "split",
        "sentences",
        "tokens",
        "coverage own domain",
        "new words own domain",
        "coverage all train",
        "new words all train",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("language", "domain", "split") else "right")
    for row in corpus_overlaps(corpus):
        own = (
            (_percent(row.own_domain.token_coverage), _percent(row.own_domain.new_words))
            if row.own_domain
            else ("-", "-")
        )
        every = (_percent(row.all_training.token_coverage), _percent(row.all_training.new_words))
        table.add_row(
            row.language, row.domain, row.split, str(row.sentences), str(row.all_training.tokens), *own, *every
        )
    console.print(table)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def print_imported(manifests: dict[str, Path], console: Console | None = None) -> None:
    """Where each imported split's manifest was written."""
    console = console or Console()
    for split, path in manifests.items():
        console.print(f"{split}: {path}", highlight=False, soft_wrap=True)
