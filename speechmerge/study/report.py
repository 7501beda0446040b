"""A study's report: `write_report(facts, rows, out_dir)` writes `report.md`, a self-contained
`report.html`, every table as LaTeX (`tables.tex`, booktabs) and the plots as PNG files under
`plots/`, all at once (temp dir + rename).

What it holds: how the numbers were made (command, hardware, executor, times, versions), the main
table (test stage, each method at the setting it chose on validation, with the references), the
recipe's `claims:` decided by paired tests (speechmerge.study.claims), the learned models (`search:`, `adamerging:`) against their methods' chosen settings, the scores per language/task/domain group in every scope, in-domain against out-of-domain, retention,
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
from speechmerge.study.jobs import LEARNED_KINDS
from speechmerge.study.rows import ScoreRow, StudyFacts
from speechmerge.study.significance import (
    MARKERS,
    Resampler,
    Samples,
    Verdict,
    detectable_differences,
    interval_text,
    paired_verdicts,
)
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
    resampler = Resampler()
    reference = reference_line(lines, facts.recipe)
    return [
        *provenance_blocks(facts, rows),
        Heading("Main table (test sets)"),
        *main_blocks(lines, resampler, reference),
        *detectable_blocks(lines, resampler, reference),
        *expert_gain_blocks(lines, resampler, "test"),
        *expert_gain_blocks(TestLines([], reference_lines(rows, "validation")), resampler, "validation"),
        *claim_blocks(lines, facts.recipe, resampler),
        Heading("Learned coefficients against the grid (test sets)"),
        *learned_blocks(lines, resampler),
        Heading("Scores per group (test sets)"),
        *group_blocks(lines, ("in_domain", "out_of_domain"), resampler),
        Heading("In-domain against out-of-domain (test sets)"),
        *id_ood_blocks(lines),
        Heading("Retention: English and other languages the experts were not trained for (test sets)"),
        *group_blocks(lines, ("retention",), resampler),
        Heading("Hyper-parameter search (validation sets)"),
        *search_blocks(validation, reference_lines(rows, "validation"), resampler, facts.selection_rules),
        Heading("Plots"),
        ranking_figure(lines, resampler),
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
    if facts.evaluation_time:
        blocks.append(evaluation_time_table(facts))
    return blocks


def evaluation_time_table(facts: StudyFacts) -> Table:
    """Decoding time per scored model, per job kind (predictions found in the cache cost none)."""
    rows = []
    for kind, time in facts.evaluation_time.items():
        per_clip = f"{time.decode_seconds / time.decoded:.3f}" if time.decoded else MISSING
        rows.append(
            Row(
                [
                    Cell(kind),
                    Cell(str(time.models)),
                    Cell(f"{time.decoded / time.models:.1f}"),
                    Cell(duration_text(time.decode_seconds / time.models)),
                    Cell(per_clip),
                ]
            )
        )
    return Table(
        "Evaluation time per model (decoding only; cached predictions cost nothing)",
        [
            Column("job kind"),
            Column("models"),
            Column("clips decoded per model"),
            Column("time per model"),
            Column("s per clip"),
        ],
        rows,
    )


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


def main_columns(
    lines: TestLines, resampler: Resampler | None = None
) -> list[tuple[Column, Callable[[Line], Average | None], bool, Callable[[Line], Samples]]]:
    """The main table's numeric columns, each with the function computing its Average for a line,
    whether it is shown in percent, and the function giving the Average on each bootstrap resample."""
    resampler = resampler or Resampler()
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
            lambda line, cells=cells: resampler.average(line, cells),
        )
        for prefix, scope_cells in averaged
        for metric, cells in _by_metric(scope_cells).items()
    ]
    in_domain = primary_groups(everything, "in_domain")
    experts, base = lines.first("experts"), lines.first("base")
    normalised = []
    if experts:
        normalised.append(
            (
                "vs experts",
                lambda line: vs_reference(line, experts, in_domain),
                lambda line: resampler.ratio(line, experts, in_domain),
            )
        )
    if experts and base:
        normalised.append(
            (
                "gain kept",
                lambda line: mean_gain_kept(line, experts, base, in_domain),
                lambda line: resampler.gain(line, experts, base, in_domain),
            )
        )
    if base:
        normalised.append(
            (
                "vs base",
                lambda line: vs_reference(line, base, in_domain),
                lambda line: resampler.ratio(line, base, in_domain),
            )
        )
    for baseline in lines.baselines:
        normalised.append(
            (
                f"vs {baseline.name}",
                lambda line, baseline=baseline: vs_reference(line, baseline, in_domain),
                lambda line, baseline=baseline: resampler.ratio(line, baseline, in_domain),
            )
        )
    if in_domain:
        columns += [
            (Column(f"{NORMALISED.label} {label} % ↑", True), compute, True, samples)
            for label, compute, samples in normalised
        ]
    return columns


def main_blocks(lines: TestLines, resampler: Resampler | None = None, reference: Line | None = None) -> list[Block]:
    if not lines.all:
        return [
            Text(
                "No test-set scores yet: the study has not reached its test stage. The validation search below shows what it has."
            )
        ]
    resampler = resampler or Resampler()
    columns = main_columns(lines, resampler)
    table = Table(
        "Test sets: each merge method at the setting it chose on validation, with the references",
        [Column("model"), Column("chosen setting")] + [column for column, _, _, _ in columns],
    )
    tested = [i for i, (column, _, _, _) in enumerate(columns) if column.label.startswith("ID ")]
    verdicts = _reference_verdicts(lines, columns, tested, resampler, reference)
    partial = False
    for line in lines.all:
        values = [compute(line) for _, compute, _, _ in columns]
        partial |= any(value is not None and value.partial for value in values)
        cells = [Cell(_line_name(line)), Cell(_setting_cell(line))]
        numbers = []
        for index, (value, (_, _, percent, samples)) in enumerate(zip(values, columns)):
            cell = _average_cell(value, percent)
            if value is not None:
                marker = verdicts.get((line.name, index))
                extra = interval_text(resampler.interval(samples(line)), percent) + (
                    f" {marker.marker}" if marker else ""
                )
                cell = Cell(cell.text + extra, cell.shown)
            numbers.append(cell)
        table.rows.append(Row(cells + numbers, competes=line.kind == "merge"))
    table.notes = _main_notes(lines) + ([PARTIAL_NOTE] if partial else [])
    table.notes += _significance_notes(resampler, reference, verdicts, [columns[i][0].label for i in tested])
    return [table, *top_group_blocks(lines, columns, resampler)]


def _setting_cell(line: Line) -> str:
    if line.kind != "merge":
        return MISSING
    return "learned (see below)" if learned_start(line.name) else setting_text(line.setting)


def learned_start(name: str) -> str | None:
    """The grid method a learned line (`search:<method>`, `adamerging:<method>`) started from; None for others."""
    kind, _, method = name.partition(":")
    return method if kind in LEARNED_KINDS and method else None


def learned_blocks(lines: TestLines, resampler: Resampler) -> list[Block]:
    """Each `search:` / `adamerging:` model against its method's chosen grid setting, on the in-domain
    columns and vs experts: both scores with intervals, the paired bootstrap difference (learned −
    grid) with its interval, and p Holm-adjusted over every comparison of this table."""
    from speechmerge.evaluation.bootstrap import paired_bootstrap
    from speechmerge.evaluation.significance import holm

    learned = [line for line in lines.merges if learned_start(line.name)]
    if not learned:
        return [Text("No `search:` or `adamerging:` entry in this study has test scores.")]
    grid = {line.name: line for line in lines.merges if not learned_start(line.name)}
    columns = [
        c for c in main_columns(lines, resampler) if c[0].label.startswith(("ID ", f"{NORMALISED.label} vs experts"))
    ]
    tests = []
    for line in learned:
        start = grid.get(learned_start(line.name))
        for column, compute, percent, samples in columns if start else []:
            mine, theirs, s_mine, s_theirs = compute(line), compute(start), samples(line), samples(start)
            if None in (mine, theirs) or s_mine is None or s_theirs is None:
                continue
            test = paired_bootstrap(
                theirs.value, mine.value, s_theirs, s_mine, column.higher_is_better, resampler.confidence
            )
            tests.append((line, start, column, percent, mine, theirs, s_mine, s_theirs, test))
    if not tests:
        return [
            Text("The learned models and their methods' grid settings have no per-utterance statistics to compare.")
        ]
    alpha = 1 - resampler.confidence
    headings = ("learned model", "grid setting", "quantity", "learned", "grid", "learned − grid", "p (Holm)", "")
    table = Table(
        "Learned coefficients (search on validation, AdaMerging on unlabelled validation audio) against the "
        "setting their method chose on the grid",
        [Column(heading) for heading in headings],
    )
    for (line, start, column, percent, mine, theirs, s_mine, s_theirs, test), adjusted in zip(
        tests, holm([t[-1].p_value for t in tests])
    ):
        labels = [Cell(line.name), Cell(f"{start.name}: {setting_text(start.setting)}"), Cell(column.label)]
        scores = (mine.value, theirs.value, s_mine, s_theirs)
        table.rows.append(_paired_row(labels, scores, test, adjusted, percent, column.higher_is_better, resampler))
    table.notes = [
        f"[low, high]: {100 * resampler.confidence:g} % bootstrap intervals on the report's shared resamples; "
        f"learned − grid: the paired bootstrap difference; {MARKERS['better']} / {MARKERS['worse']} / "
        f"{MARKERS['same']}: the learned model significantly better / worse / not significantly different "
        f"(α = {alpha:.2g}, Holm over the {len(tests)} comparisons of this table)."
    ]
    return [table]


def reference_line(lines: TestLines, recipe: dict) -> Line | None:
    """The line every method is tested against: the recipe's `reference` (a method, baseline,
    `base` or `experts`), else the joint baseline, else task arithmetic."""
    named = recipe.get("reference")
    candidates = lines.all
    if named:
        found = next((line for line in candidates if line.name == named or line.kind == named), None)
        if found is None:
            raise SpeechmergeError(
                f"recipe reference: {named!r} is not a model of this study; name a merge method, a baseline, base or experts"
            )
        return found
    return next((line for line in lines.baselines if line.name == "joint"), None) or next(
        (line for line in lines.merges if line.name == "task_arithmetic"), None
    )


def _reference_verdicts(
    lines: TestLines, columns: list, tested: list[int], resampler: Resampler, reference: Line | None
) -> dict[tuple[str, int], Verdict]:
    """Each merge against the reference on each ID column: one family, Holm-adjusted together."""
    if reference is None:
        return {}
    family, keys = [], []
    for line in lines.merges:
        if line is reference:
            continue
        for index in tested:
            column, compute, _, samples = columns[index]
            mine, ref = compute(line), compute(reference)
            s_mine, s_ref = samples(line), samples(reference)
            if mine is None or ref is None or s_mine is None or s_ref is None:
                continue
            family.append((line.name, column.label, mine.value, ref.value, s_mine, s_ref, column.higher_is_better))
            keys.append((line.name, index))
    return dict(zip(keys, paired_verdicts(family, 1 - resampler.confidence))) if family else {}


def _significance_notes(resampler: Resampler, reference: Line | None, verdicts: dict, tested: list[str]) -> list[str]:
    level = f"{100 * resampler.confidence:g} %"
    notes = [
        f"[low, high]: {level} bootstrap interval ({resampler.resamples} resamples of each group's utterances, "
        "groups resampled independently: a stratified bootstrap); none where the store holds no per-utterance statistics."
    ]
    if reference is None:
        notes.append("No reference model to test against: name one with `reference:` in the recipe.")
    elif verdicts:
        notes.append(
            f"{MARKERS['better']} / {MARKERS['worse']} / {MARKERS['same']}: better / worse / no significant difference "
            f"than the reference, {_line_name(reference)}, on that column (paired bootstrap, α = {1 - resampler.confidence:.2g}, "
            f"Holm-adjusted over the family of {len(verdicts)} tests: every merge on {', '.join(tested)})."
        )
    return notes


def _scored_merges(merges: list[Line], compute: Callable, samples: Callable) -> list[tuple]:
    """(line, Average, resampled values) of the merges with both."""
    scored = [(line, compute(line), samples(line)) for line in merges]
    return [(line, value, drawn) for line, value, drawn in scored if value is not None and drawn is not None]


def top_group_blocks(lines: TestLines, columns: list, resampler: Resampler) -> list[Block]:
    """The merges not significantly worse than the best merge, on vs experts (else the first ID
    column with two merges scored): paired bootstrap of each against the best, Holm over those
    comparisons."""
    candidates = [c for c in columns if c[0].label.startswith(f"{NORMALISED.label} vs experts")]
    candidates += [c for c in columns if c[0].label.startswith("ID ")]
    found = next(
        ((c[0], scored) for c in candidates if len(scored := _scored_merges(lines.merges, c[1], c[3])) > 1), None
    )
    if found is None:
        return []
    column, scored = found
    pick = max if column.higher_is_better else min
    best, best_value, best_samples = pick(scored, key=lambda item: item[1].value)
    others = [(line, value, drawn) for line, value, drawn in scored if line is not best]
    verdicts = paired_verdicts(
        [
            (line.name, column.label, value.value, best_value.value, drawn, best_samples, column.higher_is_better)
            for line, value, drawn in others
        ],
        1 - resampler.confidence,
    )
    top = [best.name] + [v.line for v in verdicts if not (v.significant and not v.better)]
    return [
        Text(
            f"Top group on {column.label}: {', '.join(top)} — the merges not significantly worse than the best, "
            f"{best.name} (paired bootstrap against it, Holm over {len(verdicts)} comparisons, α = {1 - resampler.confidence:.2g})."
        )
    ]


def detectable_blocks(lines: TestLines, resampler: Resampler, reference: Line | None) -> list[Block]:
    """The smallest difference each in-domain test group can detect against the reference."""
    cells = primary_groups(lines.all, "in_domain")
    found = (
        detectable_differences(resampler, lines.merges, reference, cells, 1 - resampler.confidence) if reference else []
    )
    if not found:
        return []
    labels = dict(zip([g for g, _ in cells], group_labels([g for g, _ in cells])))
    rows = [
        Row(
            [
                Cell(labels[group]),
                Cell(METRICS[metric].label),
                Cell(str(size)),
                number_cell(mdd, METRICS[metric].percent),
            ]
        )
        for group, metric, size, mdd in found
    ]
    table = Table(
        "Smallest difference each in-domain test group can detect",
        [Column("group"), Column("metric"), Column("utterances"), Column("detectable difference (points)")],
        rows,
    )
    table.notes = [
        f"(z(1 - α/2) + z(0.8)) × sd: a true difference this large is found with probability 0.8 by a paired test at "
        f"α = {1 - resampler.confidence:.2g}; sd is the median over merges of the bootstrap standard deviation of "
        f"(merge - {_line_name(reference)}) on the group. Smaller differences need more clips."
    ]
    return [table]


def _paired_row(
    labels: list[Cell],
    scores: tuple,
    test,
    adjusted: float,
    percent: bool,
    higher_is_better: bool,
    resampler: Resampler,
) -> Row:
    """`labels`, then B and A (observed, with intervals from their samples), B − A with its paired
    bootstrap interval, the Holm-adjusted p and the verdict marker."""
    mine, theirs, s_mine, s_theirs = scores
    scale = 100 if percent else 1
    better = (test.difference > 0) == higher_is_better
    verdict = MARKERS["better" if better else "worse"] if adjusted < 1 - resampler.confidence else MARKERS["same"]
    return Row(
        [
            *labels,
            Cell(f"{scale * mine:.1f}" + interval_text(resampler.interval(s_mine), percent)),
            Cell(f"{scale * theirs:.1f}" + interval_text(resampler.interval(s_theirs), percent)),
            Cell(f"{scale * test.difference:+.1f}" + interval_text(test.interval, percent)),
            Cell(f"{adjusted:.3g}"),
            Cell(verdict),
        ],
        competes=False,
    )


def expert_gain_blocks(lines: TestLines, resampler: Resampler, stage: str) -> list[Block]:
    """Each in-domain group of `stage` (test or validation): its expert against the base, both with
    intervals, the paired bootstrap difference (expert − base) with its interval and p
    Holm-adjusted over the groups — whether the experts are worth merging."""
    from speechmerge.evaluation.bootstrap import paired_bootstrap
    from speechmerge.evaluation.significance import holm

    experts, base = lines.first("experts"), lines.first("base")
    if experts is None or base is None:
        return []
    tests = []
    for group, metric in primary_groups([experts, base], "in_domain"):
        mine, theirs = experts.get(group, metric), base.get(group, metric)
        s_mine, s_theirs = resampler.samples(experts, group, metric), resampler.samples(base, group, metric)
        if None in (mine, theirs) or s_mine is None or s_theirs is None:
            continue
        style = METRICS[metric]
        test = paired_bootstrap(theirs, mine, s_theirs, s_mine, style.higher_is_better, resampler.confidence)
        tests.append((group, metric, mine, theirs, s_mine, s_theirs, test))
    if not tests:
        return []
    alpha = 1 - resampler.confidence
    labels = dict(zip([t[0] for t in tests], group_labels([t[0] for t in tests])))
    headings = ("group", "metric", "expert", "base", "expert − base", "p (Holm)", "")
    table = Table(f"Each expert against the base on its own {stage} group", [Column(h) for h in headings])
    for (group, metric, mine, theirs, s_mine, s_theirs, test), adjusted in zip(
        tests, holm([t[-1].p_value for t in tests])
    ):
        style = METRICS[metric]
        row = _paired_row(
            [Cell(labels[group]), Cell(style.label)],
            (mine, theirs, s_mine, s_theirs),
            test,
            adjusted,
            style.percent,
            style.higher_is_better,
            resampler,
        )
        table.rows.append(row)
    table.notes = [
        f"expert: the expert trained for the group; expert − base: the paired bootstrap difference with its "
        f"{100 * resampler.confidence:g} % interval; {MARKERS['better']} / {MARKERS['worse']} / {MARKERS['same']}: "
        f"the expert significantly better / worse / not significantly different (α = {alpha:.2g}, Holm over the "
        f"{len(tests)} groups). An expert that does not beat the base gives a merge little to keep."
    ]
    return [table]


def _claim_column(label: str) -> str:
    """A main-table column's name in `claims:` (its label without unit and arrow: 'ID WER')."""
    return re.sub(r"( %)? [↑↓]$", "", label)


def claim_blocks(lines: TestLines, recipe: dict, resampler: Resampler) -> list[Block]:
    """The recipe's `claims:`, each decided by a paired test on the test sets (study.claims)."""
    from speechmerge.study.claims import ClaimSpec, decide_claims, describe_missing

    specs = [ClaimSpec(**claim) for claim in recipe.get("claims") or []]
    if not specs:
        return []
    columns = {
        _claim_column(column.label): (compute, samples, percent, column.higher_is_better)
        for column, compute, percent, samples in main_columns(lines, resampler)
    }

    def find(name: str) -> Line | None:
        return next((line for line in lines.all if line.name == name or line.kind == name), None)

    results = decide_claims(specs, find, columns, resampler.confidence)
    headings = (
        "claim",
        "column",
        "A",
        "B",
        "A score",
        "B score",
        "A − B (better > 0)",
        "margin",
        "p (Holm)",
        "verdict",
    )
    table = Table("Paper claims, decided on the test sets", [Column(h) for h in headings])
    for spec, result in zip(specs, results):
        if result is None:
            table.rows.append(
                Row(
                    [
                        Cell(spec.text),
                        Cell(spec.column),
                        *[Cell(MISSING)] * 6,
                        Cell(describe_missing(spec, columns)),
                        Cell(""),
                    ],
                    competes=False,
                )
            )
            continue
        percent = columns[spec.column][2]
        mine, theirs, s_mine, s_theirs = result.scores
        scale = 100 if percent else 1
        table.rows.append(
            Row(
                [
                    Cell(spec.text),
                    Cell(spec.column),
                    Cell(result.better),
                    Cell(result.than),
                    Cell(f"{scale * mine:.1f}" + interval_text(resampler.interval(s_mine), percent)),
                    Cell(f"{scale * theirs:.1f}" + interval_text(resampler.interval(s_theirs), percent)),
                    Cell(f"{result.effect:+.1f} [{result.low:.1f}, {result.high:.1f}]"),
                    Cell(f"{spec.margin:g}"),
                    Cell(f"{result.adjusted:.3g}"),
                    Cell(result.verdict),
                ],
                competes=False,
            )
        )
    alpha = 1 - resampler.confidence
    table.notes = [
        "A / B: the model of each side with the best observed score on the column (the side's only model when it "
        f"names one). A − B: the paired bootstrap difference with its {100 * resampler.confidence:g} % interval, "
        "signed so that positive means A is better (WER: B's points minus A's). p: two-sided, Holm-adjusted over "
        f"the {sum(r is not None for r in results)} claims decided. Verdict: supported (A better, p < {alpha:.2g}, "
        "interval above the margin), better, margin not shown, contradicted (B significantly better) or not decided."
    ]
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


def group_table(lines: TestLines, scope: str, metric: str, resampler: Resampler | None = None) -> Table:
    """Models x groups of one scope and metric, with the mean over groups and the mean ratio to the
    base, each with its bootstrap interval where the store has per-utterance statistics."""
    resampler = resampler or Resampler()
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
        drawn = [resampler.samples(line, group, metric) for group in groups]
        drawn += [resampler.average(line, cells)] + ([resampler.ratio(line, base, cells)] if base else [])
        numbers = [number_cell(line.get(group, metric), style.percent) for group in groups]
        percents = [style.percent] * (len(groups) + 1) + [True] * (len(summary) - 1)
        numbers += [_average_cell(v, p) for v, p in zip(summary, percents[len(groups) :])]
        numbers = [
            _interval_cell(cell, resampler.interval(samples), percent)
            for cell, samples, percent in zip(numbers, drawn, percents)
        ]
        table.rows.append(Row([Cell(_line_name(line))] + numbers, competes=line.kind == "merge"))
    sizes = {group: max(line.utterances.get(group, 0) for line in lines.all) for group in groups}
    table.notes = [
        "Utterances per group: "
        + ", ".join(f"{label} {sizes[group]}" for label, group in zip(group_labels(groups), groups))
        + ".",
        "mean: macro average over the groups; vs base: mean over groups of s(model)/s(base), s = 1 - error rate or the score.",
    ] + ([PARTIAL_NOTE] if partial else [])
    return table


def group_blocks(lines: TestLines, scopes: tuple[str, ...], resampler: Resampler | None = None) -> list[Block]:
    blocks: list[Block] = []
    for scope in scopes:
        metrics = metrics_in(lines.all, scope)
        if not metrics:
            blocks.append(Text(f"No {SCOPE_TITLES[scope]} test scores in this study."))
        blocks += [group_table(lines, scope, metric, resampler) for metric in metrics]
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


def search_blocks(
    validation: list[Line],
    references: list[Line],
    resampler: Resampler | None = None,
    rules: dict[str, str] | None = None,
) -> list[Block]:
    """Every validation setting of every method with its in-domain averages (and their intervals),
    the chosen ones marked."""
    resampler = resampler or Resampler()
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
    edges = grid_edges(validation)
    for line in references + validation:
        values = [average(line, metric_cells) for metric_cells in by_metric.values()]
        drawn = [resampler.average(line, metric_cells) for metric_cells in by_metric.values()]
        percents = [METRICS[metric].percent for metric in by_metric]
        if experts:
            values.append(vs_reference(line, experts, cells))
            drawn.append(resampler.ratio(line, experts, cells))
            percents.append(True)
        numbers = [
            _interval_cell(_average_cell(value, percent), resampler.interval(samples), percent)
            for value, samples, percent in zip(values, drawn, percents)
        ]
        is_merge = line.kind == "merge"
        chosen = (
            ("✓" + (" (grid edge)" if line.chosen and line.name in edges else "") if line.chosen else "")
            if is_merge
            else MISSING
        )
        table.rows.append(
            Row(
                [Cell(_line_name(line)), Cell(setting_text(line.setting) if is_merge else MISSING), Cell(chosen)]
                + numbers,
                competes=is_merge,
            )
        )
    table.notes = [
        "chosen: the setting the method took to the test sets. Bold: the best setting in each column over all methods.",
        f"[low, high]: {100 * resampler.confidence:g} % bootstrap interval over the validation utterances.",
    ]
    if edges:
        table.notes.append(
            "Grid edge: the chosen value is the smallest or largest searched, so the grid does not bracket the "
            "method's best setting and a value beyond it may be better: "
            + "; ".join(f"{method}: {', '.join(found)}" for method, found in sorted(edges.items()))
            + "."
        )
    if rules:
        table.notes.append(
            "Chosen by: " + "; ".join(f"{method}: {rule}" for method, rule in sorted(rules.items()) if rule) + "."
        )
    return [table]


def _at_declared_bound(method: str, axis: str, value: float, largest: bool) -> bool:
    """Whether `value` is the bound the method declares for `axis` (e.g. a fraction's 1): a grid
    cannot go beyond it, so the chosen value there is no sign of a grid that is too narrow."""
    from speechmerge.merging.registry import REGISTRY

    param = next((p for p in REGISTRY[method].params if p.name == axis), None) if method in REGISTRY else None
    if param is None:
        return False
    return value == (param.le if largest else param.ge)


def grid_edges(validation: list[Line]) -> dict[str, list[str]]:
    """For each method whose chosen setting takes, on some numeric axis of its grid (at least two
    values searched), the smallest or the largest value — unless that value is the parameter's
    declared bound: 'scale = 3 (largest of 4)' per such axis."""
    edges: dict[str, list[str]] = {}
    for line in validation:
        if line.kind != "merge" or not line.chosen:
            continue
        siblings = [other.setting for other in validation if other.kind == "merge" and other.name == line.name]
        for axis, value in sorted(line.setting.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            searched = sorted({s[axis] for s in siblings if isinstance(s.get(axis), (int, float))})
            if len(searched) >= 2 and value in (searched[0], searched[-1]):
                largest = value == searched[-1]
                if _at_declared_bound(line.name, axis, value, largest):
                    continue
                end = "largest" if largest else "smallest"
                edges.setdefault(line.name, []).append(f"{axis} = {value:g} ({end} of {len(searched)})")
    return edges


def _interval_cell(cell: Cell, interval, percent: bool) -> Cell:
    """A number cell with its interval appended (the compared value stays the number)."""
    return Cell(cell.text + interval_text(interval, percent), cell.shown) if cell.shown is not None else cell


def ranking_figure(lines: TestLines, resampler: Resampler | None = None) -> Figure:
    caption = "Method ranking: mean normalised performance vs the experts on the in-domain test groups (%, higher is better; grey: references; dashed: the experts)"
    experts = lines.first("experts")
    cells = primary_groups(lines.all, "in_domain")
    if not experts or not cells:
        return Figure("ranking", caption, skipped="no expert scores on in-domain test groups")
    scored = [(line, vs_reference(line, experts, cells)) for line in lines.all if line is not experts]
    scored = [(line, value) for line, value in scored if value is not None]
    if not any(line.kind == "merge" for line, _ in scored):
        return Figure("ranking", caption, skipped=UNDEFINED_NORMALISED)
    resampler = resampler or Resampler()
    intervals = [resampler.interval(resampler.ratio(line, experts, cells)) for line, _ in scored]
    png = plots.ranking_bars(
        [_line_name(line) for line, _ in scored],
        [100 * value.value for _, value in scored],
        [line.kind != "merge" for line, _ in scored],
        "normalised performance vs experts (%) ↑",
        [(100 * i.low, 100 * i.high) if i else None for i in intervals],
    )
    if any(intervals):
        caption += f"; error bars: {100 * resampler.confidence:g} % bootstrap intervals"
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
