"""The study's result in the terminal: the report's main table (test sets) as Markdown, with every
reference row (base, experts, baselines) and the best merges, ranked by the mean normalised score
against the experts (or, without experts, by the table's first compared column)."""

from __future__ import annotations

from speechmerge.study.document import Row, Table, markdown_table
from speechmerge.study.report import TestLines, main_blocks
from speechmerge.study.rows import ScoreRow
from speechmerge.study.summary import merge_lines, reference_lines

TOP_MERGES = 10
RANKING_COLUMN = "norm. vs experts"


def main_table_text(rows: list[ScoreRow], top: int = TOP_MERGES) -> str | None:
    """The main table's references and its `top` merges, best first, as Markdown (None before
    the study has test scores)."""
    lines = TestLines(merge_lines(rows, "test", selected_only=True), reference_lines(rows, "test"))
    table = next((block for block in main_blocks(lines) if isinstance(block, Table)), None)
    if table is None:
        return None
    column = _ranking_column(table)
    merges = [row for row in table.rows if row.competes]
    if column is not None:
        merges.sort(key=lambda row: _rank(row, column, table.columns[column].higher_is_better))
    shown = merges[:top]
    ranked = f", ranked by {table.columns[column].label}" if column is not None else ""
    title = f"{table.title}: the {len(shown)} best of {len(merges)} merges{ranked}"
    note = "Bold: the best of these merges in each column; every merge, and what each column means: the report."
    short = Table(title, table.columns, [row for row in table.rows if not row.competes] + shown, [note])
    return "\n".join(markdown_table(short)).rstrip()


def _ranking_column(table: Table) -> int | None:
    directed = [i for i, c in enumerate(table.columns) if c.higher_is_better is not None]
    return next((i for i in directed if table.columns[i].label.startswith(RANKING_COLUMN)), next(iter(directed), None))


def _rank(row: Row, column: int, higher_is_better: bool) -> tuple[bool, float]:
    """Sort key: rows with a value first, best value first."""
    shown = row.cells[column].shown
    if shown is None:
        return (True, 0.0)
    return (False, -shown if higher_is_better else shown)
