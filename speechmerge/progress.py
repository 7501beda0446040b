"""The one rich progress bar of speechmerge: description, bar, done/total, elapsed, remaining, on stderr."""

from __future__ import annotations


def progress_bar(enabled: bool = True, *extra_columns, transient: bool = False):
    """A `rich.progress.Progress` (use it as a context manager); disabled, its calls do nothing.

    `extra_columns` are appended after the standard ones (e.g. a TextColumn showing a loss)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
    )
    return Progress(*columns, disable=not enabled, transient=transient, console=Console(stderr=True))
