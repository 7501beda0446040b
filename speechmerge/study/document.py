"""A report as a list of blocks (headings, text, tables, figures, code) rendered to Markdown, to
one self-contained HTML page (inline CSS, figures as base64 PNG, nothing fetched from a network),
and its tables to LaTeX (booktabs) for a paper.

Tables mark the best value of each directed column in bold, among the rows that compete (merges;
reference rows are shown in italics and never bolded). Best is judged on the value as displayed, so
ties on screen are all bold.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator
from dataclasses import dataclass, field

MISSING = "–"


@dataclass(frozen=True)
class Column:
    """A table column; `higher_is_better` None for a column that is not compared (labels, settings)."""

    label: str
    higher_is_better: bool | None = None


@dataclass(frozen=True)
class Cell:
    """A cell's text and, for a number, the value as displayed (what best-per-column compares)."""

    text: str
    shown: float | None = None


@dataclass
class Row:
    cells: list[Cell]
    competes: bool = True


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def best(self) -> set[tuple[int, int]]:
        """(row, column) positions holding the best displayed value of a directed column."""
        marked = set()
        for c, column in enumerate(self.columns):
            if column.higher_is_better is None:
                continue
            shown = [
                (r, row.cells[c].shown)
                for r, row in enumerate(self.rows)
                if row.competes and row.cells[c].shown is not None
            ]
            if not shown:
                continue
            pick = max if column.higher_is_better else min
            top = pick(value for _, value in shown)
            marked.update((r, c) for r, value in shown if value == top)
        return marked


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Figure:
    """A plot (`png` bytes, saved as `plots/<name>.png`) or, when its data is absent, the reason it was skipped."""

    name: str
    caption: str
    png: bytes | None = None
    skipped: str | None = None

    @property
    def path(self) -> str:
        return f"plots/{self.name}.png"


Block = Heading | Text | Code | Table | Figure


def number_cell(value: float | None, percent: bool, mark: str = "") -> Cell:
    """WER-like fractions as percent with 1 decimal, scores (BLEU, chrF) with 1 decimal; `mark` appended."""
    if value is None:
        return Cell(MISSING)
    shown = round(100 * value if percent else value, 1)
    return Cell(f"{shown:.1f}{mark}", shown)


def _styled_rows(table: Table) -> Iterator[tuple[Row, list[tuple[str, str]]]]:
    """Each row with its cells' texts and emphasis: "best" (bold), "reference" (a reference row's
    name, italic) or "" (plain)."""
    best = table.best()
    for r, row in enumerate(table.rows):
        yield (
            row,
            [
                (cell.text, "best" if (r, c) in best else "reference" if not row.competes and c == 0 else "")
                for c, cell in enumerate(row.cells)
            ],
        )


MARKDOWN_EMPHASIS = {"best": "**{}**", "reference": "*{}*", "": "{}"}


def markdown_table(table: Table) -> list[str]:
    """The table as Markdown lines: its title in bold, a pipe table, its notes."""
    lines = [f"**{table.title}**", "", "| " + " | ".join(c.label for c in table.columns) + " |"]
    lines.append("|" + "|".join("---" if c.higher_is_better is None else "---:" for c in table.columns) + "|")
    for _, cells in _styled_rows(table):
        lines.append(
            "| " + " | ".join(MARKDOWN_EMPHASIS[style].format(text.replace("|", "\\|")) for text, style in cells) + " |"
        )
    return lines + [""] + [f"{note}  " for note in table.notes]


def to_markdown(title: str, blocks: list[Block]) -> str:
    """The report as Markdown; figures link to their PNG files beside it."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text]
        elif isinstance(block, Text):
            lines += [block.text]
        elif isinstance(block, Code):
            lines += ["```", block.text.rstrip("\n"), "```"]
        elif isinstance(block, Table):
            lines += markdown_table(block)
        elif block.png is not None:
            lines += [f"![{block.caption}]({block.path})", "", f"*{block.caption}*"]
        else:
            lines += [f"*{block.caption}: not drawn ({block.skipped}).*"]
        lines.append("")
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f3f3f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.reference td { color: #555; font-style: italic; background: #fafafa; }
.note { font-size: 0.85em; color: #555; margin: 0.1em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .skipped { font-size: 0.9em; color: #555; font-style: italic; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _html_table(table: Table) -> list[str]:
    out = ["<table>", f"<caption>{html.escape(table.title)}</caption>", "<thead><tr>"]
    out += [f"<th>{html.escape(c.label)}</th>" for c in table.columns]
    out.append("</tr></thead><tbody>")
    for row, cells in _styled_rows(table):
        out.append("<tr>" if row.competes else '<tr class="reference">')
        for column, (text, style) in zip(table.columns, cells):
            klass = "" if column.higher_is_better is None else ' class="num"'
            shown = f"<strong>{html.escape(text)}</strong>" if style == "best" else html.escape(text)
            out.append(f"<td{klass}>{shown}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return out + [f'<p class="note">{html.escape(note)}</p>' for note in table.notes]


def to_html(title: str, blocks: list[Block]) -> str:
    """The report as one HTML page with its CSS inline and every figure embedded as a base64 PNG."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
    ]
    out += [f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Code):
            out.append(f"<pre>{html.escape(block.text)}</pre>")
        elif isinstance(block, Table):
            out += _html_table(block)
        elif block.png is not None:
            data = base64.b64encode(block.png).decode("ascii")
            out.append(
                f'<figure id="{block.name}"><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
            )
            out.append(f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        else:
            out.append(
                f'<p class="skipped">{html.escape(block.caption)}: not drawn ({html.escape(block.skipped or "")}).</p>'
            )
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
LATEX_SYMBOLS = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "†": r"$^\dagger$", "–": "--", "✓": r"$\checkmark$"}


def latex_text(text: str) -> str:
    """Text with LaTeX's special characters escaped and the report's symbols (arrows, dagger) as maths."""
    return "".join(LATEX_SPECIALS.get(ch) or LATEX_SYMBOLS.get(ch) or ch for ch in text)


LATEX_EMPHASIS = {"best": "\\textbf{{{}}}", "reference": "\\textit{{{}}}", "": "{}"}


def _latex_table(table: Table) -> list[str]:
    spec = "".join("l" if c.higher_is_better is None else "r" for c in table.columns)
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_text(table.title)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
    ]
    out.append(" & ".join(latex_text(c.label) for c in table.columns) + r" \\")
    out.append(r"\midrule")
    for _, cells in _styled_rows(table):
        out.append(" & ".join(LATEX_EMPHASIS[style].format(latex_text(text)) for text, style in cells) + r" \\")
    return out + [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]


def to_latex(blocks: list[Block]) -> str:
    """Every table of the report as a booktabs LaTeX table (needs \\usepackage{booktabs}; amssymb for the check mark)."""
    tables = [block for block in blocks if isinstance(block, Table)]
    return "\n".join(
        ["% speechmerge study report tables: \\usepackage{booktabs,amssymb}", ""]
        + [line for table in tables for line in _latex_table(table)]
    )
