"""A study's report: `write_report(facts, rows, out_dir)` writes `report.md`, a self-contained
`report.html`, every table as LaTeX (`tables.tex`, booktabs) and the plots as PNG files under
`plots/`, all at once (temp dir + rename).

What it holds: how the numbers were made (command, hardware, executor, times, versions), the main
table (test stage, each method at the setting it chose on validation, with the references), the
scores per language/task/domain group in every scope, in-domain against out-of-domain, retention,
the validation search, the plots, and the recipe. Sections whose data is absent say so: a study
stopped half-way still renders. The maths of averages and normalised performance is in
`speechmerge.study.summary`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.study import plots
from speechmerge.study.document import (
    MISSING,
    Block,
    Cell,
    Code,
    Column,
    Figure,
    Heading,
    Row,
    Table,
    Text,
    number_cell,
    to_html,
    to_latex,
    to_markdown,
)
from speechmerge.study.rows import ScoreRow, StudyFacts
from speechmerge.study.summary import (
    METRICS,
    NORMALISED,
    RETENTION_LANGUAGE,
    SCOPE_TITLES,
    SCOPES,
    Average,
    Group,
    Line,
    average,
    check_rows,
    groups_with,
    mean_gain_kept,
    merge_lines,
    metrics_in,
    primary_groups,
    ratios,
    reference_lines,
    setting_text,
    vs_reference,
)

REPORT_ENTRIES = {"report.md", "report.html", "tables.tex", "plots"}
PARTIAL_MARK = "†"
UNDEFINED_NORMALISED = "no merge has a defined normalised score: not scored in-domain, or the experts score 0 there (WER of 100 % or more, BLEU 0)"
PARTIAL_NOTE = f"{PARTIAL_MARK} averaged over fewer groups than the column covers (a partial study, or a model not scored everywhere)."
Cells = list[tuple[Group, str]]


@dataclass
class TestLines:
    """The test-stage lines and the references they are compared with."""

    merges: list[Line]
    references: list[Line]

    @property
    def all(self) -> list[Line]:
        return self.references + self.merges

    def first(self, kind: str) -> Line | None:
        return next((line for line in self.references if line.kind == kind), None)

    @property
    def baselines(self) -> list[Line]:
        return [line for line in self.references if line.kind == "baseline"]


def write_report(facts: StudyFacts, rows: list[ScoreRow], out_dir: Path) -> dict[str, Path]:
    """Write the study's report into `out_dir` (its own folder, replaced whole) and return the paths
    written: `markdown`, `html`, `latex` and one entry per drawn plot."""
    from speechmerge.fsutil import atomic_directory

    out_dir = Path(out_dir)
    check_rows(rows, f"study {facts.name}")
    _refuse_foreign_folder(out_dir)
    blocks = report_blocks(facts, rows)
    title = f"Study report: {facts.name}"
    figures = [block for block in blocks if isinstance(block, Figure) and block.png is not None]
    with atomic_directory(out_dir, force=True) as tmp:
        (tmp / "plots").mkdir()
        for figure in figures:
            (tmp / figure.path).write_bytes(figure.png)
        (tmp / "report.md").write_text(to_markdown(title, blocks), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(title, blocks), encoding="utf-8")
        (tmp / "tables.tex").write_text(to_latex(blocks), encoding="utf-8")
    written = {
        "markdown": "report.md",
        "html": "report.html",
        "latex": "tables.tex",
        **{f.name: f.path for f in figures},
    }
    return {key: out_dir / name for key, name in written.items()}


def _refuse_foreign_folder(out_dir: Path) -> None:
    """The report replaces its folder whole, so that folder must hold nothing but a report."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SpeechmergeError(f"{out_dir}: is a file; give the report a folder of its own")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in REPORT_ENTRIES) if out_dir.is_dir() else []
    if foreign:
        raise SpeechmergeError(
            f"{out_dir}: holds {foreign[0]!r}, which is not part of a report; the report replaces its folder whole, so give it a folder of its own"
        )


def report_blocks(facts: StudyFacts, rows: list[ScoreRow]) -> list[Block]:
    """Every section of the report, in order."""
    lines = TestLines(merge_lines(rows, "test", selected_only=True), reference_lines(rows, "test"))
    validation = merge_lines(rows, "validation", selected_only=False)
    return [
        *provenance_blocks(facts, rows),
        Heading("Main table (test sets)"),
        *main_blocks(lines),
        Heading("Scores per group (test sets)"),
        *group_blocks(lines, ("in_domain", "out_of_domain")),
        Heading("In-domain against out-of-domain (test sets)"),
        *id_ood_blocks(lines),
        Heading("Retention: English and other languages the experts were not trained for (test sets)"),
        *group_blocks(lines, ("retention",)),
        Heading("Hyper-parameter search (validation sets)"),
        *search_blocks(validation, reference_lines(rows, "validation")),
        Heading("Plots"),
        ranking_figure(lines),
        heatmap_figure(lines),
        id_ood_figure(lines),
        *curve_figures(facts, validation),
        Heading("Recipe"),
        Text(f"{facts.recipe_path}, as the study read it:"),
        Code(_yaml(facts.recipe)),
    ]


def _yaml(recipe: dict) -> str:
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def duration_text(seconds: float) -> str:
    """`3725 s (1 h 02 min 05 s)`, or `42.0 s` under a minute."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = (f"{hours} h " if hours else "") + f"{minutes:02d} min {secs:02d} s"
    return f"{whole} s ({parts})"


def provenance_blocks(facts: StudyFacts, rows: list[ScoreRow]) -> list[Block]:
    """How the numbers were made: command, hardware, times, versions, job time per kind."""
    stages = {stage: sum(1 for row in rows if row.stage == stage) for stage in ("validation", "test")}
    items = [
        ("command", facts.command),
        ("recipe", facts.recipe_path),
        ("hardware", facts.hardware),
        ("executor", facts.executor),
        ("started", facts.started),
        ("finished", facts.finished or "not finished: a partial study, sections without data say so"),
        ("wall time", duration_text(facts.wall_seconds)),
        ("scores", f"{stages['validation']} on validation sets, {stages['test']} on test sets"),
        *((f"version: {name}", version) for name, version in sorted(facts.versions.items())),
    ]
    blocks: list[Block] = [
        Heading("How these numbers were made"),
        Table("Study", [Column("item"), Column("value")], [Row([Cell(k), Cell(v)]) for k, v in items]),
    ]
    if facts.job_seconds:
        total = sum(facts.job_seconds.values())
        job_rows = [
            Row(
                [
                    Cell(kind),
                    Cell(duration_text(seconds)),
                    Cell(f"{100 * seconds / total:.1f}" if total > 0 else MISSING),
                ]
            )
            for kind, seconds in sorted(facts.job_seconds.items(), key=lambda item: -item[1])
        ]
        blocks.append(
            Table(
                "Job time per kind (sum over jobs; may exceed wall time with parallel workers)",
                [Column("job kind"), Column("time"), Column("share %")],
                job_rows,
            )
        )
    return blocks


def _line_name(line: Line) -> str:
    return {"base": f"base ({line.name})", "experts": "experts (own sets)", "baseline": f"baseline: {line.name}"}.get(
        line.kind, line.name
    )


def _average_cell(value: Average | None, percent: bool) -> Cell:
    if value is None:
        return Cell(MISSING)
    return number_cell(value.value, percent, PARTIAL_MARK if value.partial else "")


def _by_metric(cells: Cells) -> dict[str, Cells]:
    """Cells split by metric, in METRICS order."""
    return {metric: [c for c in cells if c[1] == metric] for metric in METRICS if any(c[1] == metric for c in cells)}


def main_columns(lines: TestLines) -> list[tuple[Column, Callable[[Line], Average | None], bool]]:
    """The main table's numeric columns, each with the function computing its Average for a line
    and whether it is shown in percent."""
    everything = lines.all
    retention = primary_groups(everything, "retention")
    averaged = [
        ("ID", primary_groups(everything, "in_domain")),
        ("OOD", primary_groups(everything, "out_of_domain")),
        ("ret. en", [c for c in retention if c[0].language == RETENTION_LANGUAGE]),
        ("ret. other", [c for c in retention if c[0].language != RETENTION_LANGUAGE]),
    ]
    columns = [
        (
            Column(f"{prefix} {METRICS[metric].heading}", METRICS[metric].higher_is_better),
            lambda line, cells=cells: average(line, cells),
            METRICS[metric].percent,
        )
        for prefix, scope_cells in averaged
        for metric, cells in _by_metric(scope_cells).items()
    ]
    in_domain = primary_groups(everything, "in_domain")
    experts, base = lines.first("experts"), lines.first("base")
    normalised = []
    if experts:
        normalised.append(("vs experts", lambda line: vs_reference(line, experts, in_domain)))
    if experts and base:
        normalised.append(("gain kept", lambda line: mean_gain_kept(line, experts, base, in_domain)))
    if base:
        normalised.append(("vs base", lambda line: vs_reference(line, base, in_domain)))
    for baseline in lines.baselines:
        normalised.append(
            (f"vs {baseline.name}", lambda line, baseline=baseline: vs_reference(line, baseline, in_domain))
        )
    if in_domain:
        columns += [(Column(f"{NORMALISED.label} {label} % ↑", True), compute, True) for label, compute in normalised]
    return columns


def main_blocks(lines: TestLines) -> list[Block]:
    if not lines.all:
        return [
            Text(
                "No test-set scores yet: the study has not reached its test stage. The validation search below shows what it has."
            )
        ]
    columns = main_columns(lines)
    table = Table(
        "Test sets: each merge method at the setting it chose on validation, with the references",
        [Column("model"), Column("chosen setting")] + [column for column, _, _ in columns],
    )
    partial = False
    for line in lines.all:
        values = [compute(line) for _, compute, _ in columns]
        partial |= any(value is not None and value.partial for value in values)
        cells = [Cell(_line_name(line)), Cell(setting_text(line.setting) if line.kind == "merge" else MISSING)]
        table.rows.append(
            Row(
                cells + [_average_cell(value, percent) for value, (_, _, percent) in zip(values, columns)],
                competes=line.kind == "merge",
            )
        )
    table.notes = _main_notes(lines) + ([PARTIAL_NOTE] if partial else [])
    return [table]


def _main_notes(lines: TestLines) -> list[str]:
    notes = [
        (
            "ID / OOD: macro average over the in-domain / out-of-domain test groups (language, task, domain), "
            "each group scored with its primary metric: WER for transcription (% of reference words, lower is better ↓), "
            "BLEU for translation (sacrebleu, 0-100, higher is better ↑); CER and chrF stand in where those are absent."
        ),
        f"ret. en / ret. other: the same average on the retention sets, English ({RETENTION_LANGUAGE}) and the other languages no expert was trained for.",
        (
            "norm.: mean over in-domain groups with s = 1 - WER (or BLEU): vs experts = s(model)/s(expert of the group); "
            "gain kept = (s(model) - s(base))/(s(expert) - s(base)), the share of the expert's gain kept; "
            "vs base, vs <baseline> = s(model)/s(that model) (speechmerge.evaluation.relative_scores; in %)."
        ),
        "Bold: the best merge in each column; reference rows (base, experts, baselines) in italics, not ranked.",
        "–: not scored, or a normalised score that is not defined (its reference scores 0, or for gain kept the expert is no better than the base).",
    ]
    experts = lines.first("experts")
    oracle = experts.oracle_groups if experts else set()
    if oracle:
        counts = ", ".join(
            f"{SCOPE_TITLES[scope]} {n}" for scope in SCOPES if (n := sum(g.scope == scope for g in oracle))
        )
        notes.append(
            f"experts: each group scored by the expert trained for it (named for it); groups no expert is named for ({counts}) take the best of the experts scored there (an oracle)."
        )
    else:
        notes.append("experts: each group scored by the expert trained for it (named for it).")
    return notes


def group_labels(groups: list[Group]) -> list[str]:
    """Short column labels: the parts of (language, task, domain) that vary, joined by /; the
    evaluation set's name too when those alone do not tell the groups apart."""
    parts = [p for p in ("language", "task", "domain") if len({getattr(g, p) for g in groups}) > 1] or ["language"]
    if len({tuple(getattr(g, p) for p in parts) for g in groups}) < len(groups):
        parts = ["evaluation", *parts]
    return ["/".join(getattr(g, p) for p in parts) for g in groups]


def group_table(lines: TestLines, scope: str, metric: str) -> Table:
    """Models x groups of one scope and metric, with the mean over groups and the mean ratio to the base."""
    style = METRICS[metric]
    groups = groups_with(lines.all, scope, metric)
    cells = [(group, metric) for group in groups]
    base = lines.first("base")
    columns = (
        [Column("model")]
        + [Column(label, style.higher_is_better) for label in group_labels(groups)]
        + [Column("mean", style.higher_is_better)]
    )
    if base:
        columns.append(Column("vs base % ↑", True))
    table = Table(f"{SCOPE_TITLES[scope]} {style.heading}", columns)
    partial = False
    for line in (line for line in lines.all if average(line, cells)):
        mean = average(line, cells)
        summary = [mean] + ([vs_reference(line, base, cells)] if base else [])
        partial |= any(value is not None and value.partial for value in summary)
        numbers = [number_cell(line.get(group, metric), style.percent) for group in groups]
        percents = [style.percent] + [True] * (len(summary) - 1)
        table.rows.append(
            Row(
                [Cell(_line_name(line))] + numbers + [_average_cell(v, p) for v, p in zip(summary, percents)],
                competes=line.kind == "merge",
            )
        )
    sizes = {group: max(line.utterances.get(group, 0) for line in lines.all) for group in groups}
    table.notes = [
        "Utterances per group: "
        + ", ".join(f"{label} {sizes[group]}" for label, group in zip(group_labels(groups), groups))
        + ".",
        "mean: macro average over the groups; vs base: mean over groups of s(model)/s(base), s = 1 - error rate or the score.",
    ] + ([PARTIAL_NOTE] if partial else [])
    return table


def group_blocks(lines: TestLines, scopes: tuple[str, ...]) -> list[Block]:
    blocks: list[Block] = []
    for scope in scopes:
        metrics = metrics_in(lines.all, scope)
        if not metrics:
            blocks.append(Text(f"No {SCOPE_TITLES[scope]} test scores in this study."))
        blocks += [group_table(lines, scope, metric) for metric in metrics]
    return blocks


def id_ood_blocks(lines: TestLines) -> list[Block]:
    """Per shared primary metric: the in-domain and out-of-domain averages and their difference."""
    in_domain = _by_metric(primary_groups(lines.all, "in_domain"))
    out_of_domain = _by_metric(primary_groups(lines.all, "out_of_domain"))
    shared = [metric for metric in in_domain if metric in out_of_domain]
    if not shared:
        return [
            Text(
                "No metric was scored both in-domain and out-of-domain on the test sets, so there is nothing to compare."
            )
        ]
    columns = [Column("model")]
    for metric in shared:
        style = METRICS[metric]
        unit = "pp" if style.percent else ""
        columns += [
            Column(f"ID {style.heading}", style.higher_is_better),
            Column(f"OOD {style.heading}", style.higher_is_better),
            Column(
                f"OOD-ID {style.label} {unit}".rstrip() + (" ↑" if style.higher_is_better else " ↓"),
                style.higher_is_better,
            ),
        ]
    table = Table("In-domain (ID) against out-of-domain (OOD) averages", columns)
    for line in lines.all:
        pairs = [(metric, average(line, in_domain[metric]), average(line, out_of_domain[metric])) for metric in shared]
        if not any(inside or outside for _, inside, outside in pairs):
            continue
        cells = [Cell(_line_name(line))]
        for metric, inside, outside in pairs:
            percent = METRICS[metric].percent
            gap = outside.value - inside.value if inside and outside else None
            cells += [_average_cell(inside, percent), _average_cell(outside, percent), number_cell(gap, percent)]
        table.rows.append(Row(cells, competes=line.kind == "merge"))
    table.notes = [
        "OOD-ID: the out-of-domain average minus the in-domain one (percentage points for error rates); the closer to 0, the better a model carries over."
    ]
    return [table]


def search_blocks(validation: list[Line], references: list[Line]) -> list[Block]:
    """Every validation setting of every method with its in-domain averages, the chosen ones marked."""
    if not validation:
        return [Text("No validation scores of merges: the study has not searched any setting yet.")]
    cells = primary_groups(validation + references, "in_domain") or primary_groups(validation, "out_of_domain")
    by_metric = _by_metric(cells)
    experts = next((line for line in references if line.kind == "experts"), None)
    columns = [Column("method"), Column("setting"), Column("chosen")]
    columns += [Column(f"{METRICS[metric].heading}", METRICS[metric].higher_is_better) for metric in by_metric]
    if experts:
        columns.append(Column(f"{NORMALISED.label} vs experts % ↑", True))
    table = Table("Validation: every setting searched (macro averages over the validation groups)", columns)
    for line in references + validation:
        values = [average(line, metric_cells) for metric_cells in by_metric.values()]
        numbers = [_average_cell(value, METRICS[metric].percent) for value, metric in zip(values, by_metric)]
        if experts:
            numbers.append(_average_cell(vs_reference(line, experts, cells), True))
        is_merge = line.kind == "merge"
        chosen = ("✓" if line.chosen else "") if is_merge else MISSING
        table.rows.append(
            Row(
                [Cell(_line_name(line)), Cell(setting_text(line.setting) if is_merge else MISSING), Cell(chosen)]
                + numbers,
                competes=is_merge,
            )
        )
    table.notes = [
        "chosen: the setting the method took to the test sets. Bold: the best setting in each column over all methods."
    ]
    return [table]


def ranking_figure(lines: TestLines) -> Figure:
    caption = "Method ranking: mean normalised performance vs the experts on the in-domain test groups (%, higher is better; grey: references; dashed: the experts)"
    experts = lines.first("experts")
    cells = primary_groups(lines.all, "in_domain")
    if not experts or not cells:
        return Figure("ranking", caption, skipped="no expert scores on in-domain test groups")
    scored = [(line, vs_reference(line, experts, cells)) for line in lines.all if line is not experts]
    scored = [(line, value) for line, value in scored if value is not None]
    if not any(line.kind == "merge" for line, _ in scored):
        return Figure("ranking", caption, skipped=UNDEFINED_NORMALISED)
    png = plots.ranking_bars(
        [_line_name(line) for line, _ in scored],
        [100 * value.value for _, value in scored],
        [line.kind != "merge" for line, _ in scored],
        "normalised performance vs experts (%) ↑",
    )
    return Figure("ranking", caption, png)


def heatmap_figure(lines: TestLines) -> Figure:
    caption = "Language x method: normalised performance vs the group's expert on each in-domain test group (%, higher is better; blank: not scored)"
    experts = lines.first("experts")
    cells = primary_groups(lines.all, "in_domain")
    shown = [line for line in lines.all if line is not experts]
    if not experts or not cells or not any(line.kind == "merge" for line in shown):
        return Figure("heatmap", caption, skipped="needs merges and experts scored on in-domain test groups")
    labels = [
        f"{label} ({METRICS[metric].label})" for label, (_, metric) in zip(group_labels([g for g, _ in cells]), cells)
    ]
    values = [[None if v is None else 100 * v for v in ratios(line, experts, cells)] for line in shown]
    if all(v is None for row, line in zip(values, shown) if line.kind == "merge" for v in row):
        return Figure("heatmap", caption, skipped=UNDEFINED_NORMALISED)
    return Figure(
        "heatmap", caption, plots.heatmap([_line_name(line) for line in shown], labels, values, "vs expert (%)")
    )


def id_ood_figure(lines: TestLines) -> Figure:
    caption = "In-domain against out-of-domain: one point per model (grey squares: references)"
    in_domain = _by_metric(primary_groups(lines.all, "in_domain"))
    out_of_domain = _by_metric(primary_groups(lines.all, "out_of_domain"))
    metric = next((m for m in in_domain if m in out_of_domain), None)
    if metric is None:
        return Figure(
            "id_vs_ood", caption, skipped="no metric scored both in-domain and out-of-domain on the test sets"
        )
    style = METRICS[metric]
    scale = 100 if style.percent else 1
    points = []
    for line in lines.all:
        inside, outside = average(line, in_domain[metric]), average(line, out_of_domain[metric])
        if inside and outside:
            points.append((_line_name(line), scale * inside.value, scale * outside.value, line.kind != "merge"))
    if not points:
        return Figure("id_vs_ood", caption, skipped="no model scored both in-domain and out-of-domain")
    return Figure(
        "id_vs_ood",
        f"{caption}; {style.label}",
        plots.scatter(points, f"in-domain {style.heading}", f"out-of-domain {style.heading}"),
    )


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def curve_figures(facts: StudyFacts, validation: list[Line]) -> list[Figure]:
    """One figure per searched parameter: the validation average of each primary metric against the
    parameter's value, one line per method; at each value the best over the method's other parameters."""
    caption = "Hyper-parameter curves (validation sets)"
    if not facts.hyperparameters:
        return [Figure("hyperparameters", caption, skipped="the study searched no hyper-parameters")]
    if not validation:
        return [Figure("hyperparameters", caption, skipped="no validation scores of merges yet")]
    by_metric = _by_metric(primary_groups(validation, "in_domain") or primary_groups(validation, "out_of_domain"))
    parameters = list(dict.fromkeys(p for names in facts.hyperparameters.values() for p in names))
    figures = []
    for parameter in parameters:
        chosen = {
            line.name: _axis_value(line.setting[parameter])
            for line in validation
            if line.chosen and parameter in line.setting
        }
        panels = []
        for metric, cells in by_metric.items():
            style = METRICS[metric]
            series = {}
            for method, names in facts.hyperparameters.items():
                points = _profile(
                    [
                        line
                        for line in validation
                        if line.name == method and parameter in names and parameter in line.setting
                    ],
                    parameter,
                    cells,
                    style.higher_is_better,
                )
                if len(points) > 1:
                    series[method] = [(x, 100 * y if style.percent else y) for x, y in points]
            if series:
                panels.append((f"validation {style.heading}", series))
        name = f"hyperparameter-{_file_part(parameter)}"
        text = f"{caption}: {parameter} (at each value, the best validation average over the method's other parameters; ringed: the chosen setting)"
        figures.append(
            Figure(name, text, plots.curves(parameter, panels, chosen))
            if panels
            else Figure(name, text, skipped=f"no method has validation scores at two or more values of {parameter}")
        )
    return figures


def _axis_value(value: object) -> object:
    """A setting's value as a point on a plot axis: numbers and strings as they are, anything else as text."""
    return value if isinstance(value, (int, float, str)) else str(value)


def _profile(lines: list[Line], parameter: str, cells: Cells, higher_is_better: bool) -> list[tuple[object, float]]:
    """(value of `parameter`, best average over the lines with that value)."""
    best: dict[object, float] = {}
    for line in lines:
        mean = average(line, cells)
        if mean is None:
            continue
        x = _axis_value(line.setting[parameter])
        if x not in best or (mean.value > best[x] if higher_is_better else mean.value < best[x]):
            best[x] = mean.value
    return list(best.items())
