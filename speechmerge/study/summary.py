"""A study's scores arranged for its report: lines, groups, averages and normalised performance.

A *line* is what one row of a report table describes: a merge method at the setting it chose on
validation, or a reference (the base, the experts, each baseline). A *group* is one (scope,
evaluation set, language, task, domain) cell of the evaluation. Averages are macro averages: the
unweighted mean over groups. Normalised performance follows `speechmerge.evaluation.relative_scores`,
per in-domain group with the group's primary metric (WER for transcription, BLEU for
translation), then averaged over groups:

    vs experts   s(m, g) / s(e_g, g)                         (1 = the group's expert)
    gain kept    (s(m, g) - s(b, g)) / (s(e_g, g) - s(b, g)) (1 = the expert's gain, 0 = the base)
    vs R         s(m, g) / s(R, g)   for R the base or a baseline

with s = 1 - rate for WER/CER and s = the score for BLEU/chrF. The expert of a group, e_g, is the
expert trained for it, known by its name (`names_group`); for a group no expert is named for, the
best expert scored on it (an oracle, which the report says).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import fmean
from typing import Literal

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.relative_scores import gain_kept, vs_expert
from speechmerge.study.rows import Scope, ScoreRow, Stage
from speechmerge.study.selection import primary_metric

LineKind = Literal["merge", "base", "experts", "baseline"]
SCOPES: tuple[Scope, ...] = ("in_domain", "out_of_domain", "retention")
SCOPE_TITLES = {"in_domain": "in-domain", "out_of_domain": "out-of-domain", "retention": "retention"}
RETENTION_LANGUAGE = "en"


@dataclass(frozen=True)
class MetricStyle:
    """How a metric is shown: its label, whether it is a fraction shown in percent, its direction."""

    label: str
    percent: bool
    higher_is_better: bool

    @property
    def heading(self) -> str:
        return f"{self.label}{' %' if self.percent else ''} {'↑' if self.higher_is_better else '↓'}"


METRICS = {
    "wer": MetricStyle("WER", percent=True, higher_is_better=False),
    "cer": MetricStyle("CER", percent=True, higher_is_better=False),
    "bleu": MetricStyle("BLEU", percent=False, higher_is_better=True),
    "chrf": MetricStyle("chrF", percent=False, higher_is_better=True),
    "language_id": MetricStyle("LID", percent=True, higher_is_better=True),
}
NORMALISED = MetricStyle("norm.", percent=True, higher_is_better=True)


@dataclass(frozen=True, order=True)
class Group:
    """One evaluation cell: a (language, task, domain) of one evaluation set, in one scope."""

    scope: str
    evaluation: str
    language: str
    task: str
    domain: str


@dataclass
class Line:
    """One row of a report table: its scores by (group, metric) and the utterances of each group;
    `chosen` marks a merge setting its method chose on validation; `oracle_groups`, on the experts'
    line, the groups no expert was trained for, scored by the best of several experts."""

    name: str
    kind: LineKind
    setting: dict = field(default_factory=dict)
    chosen: bool = True
    oracle_groups: set[Group] = field(default_factory=set)
    scores: dict[tuple[Group, str], float] = field(default_factory=dict)
    utterances: dict[Group, int] = field(default_factory=dict)

    def get(self, group: Group, metric: str) -> float | None:
        return self.scores.get((group, metric))


@dataclass(frozen=True)
class Average:
    """A macro average over `groups` of the `expected` groups (fewer on a partial study)."""

    value: float
    groups: int
    expected: int

    @property
    def partial(self) -> bool:
        return self.groups < self.expected


def group_of(row: ScoreRow) -> Group:
    return Group(row.scope, row.evaluation, row.language, row.task, row.domain)


def setting_text(setting: dict) -> str:
    """`a=1, b=x` in key order; `defaults` for an empty setting."""
    return ", ".join(f"{key}={value}" for key, value in sorted(setting.items())) or "defaults"


def check_rows(rows: list[ScoreRow], source: str) -> None:
    """One clear line for rows a report cannot be made from: none, unknown metrics, non-finite or
    negative values, or the same score given twice."""
    if not rows:
        raise SpeechmergeError(
            f"{source}: no scores to report; run the study (or let it finish a first evaluation) before asking for its report"
        )
    seen = set()
    for row in rows:
        where = f"{source}: job {row.job} ({row.model}, {row.stage}, {row.language}/{row.task}/{row.domain})"
        if row.metric not in METRICS:
            raise SpeechmergeError(f"{where}: unknown metric {row.metric!r}; expected one of {', '.join(METRICS)}")
        if not math.isfinite(row.value) or row.value < 0:
            raise SpeechmergeError(
                f"{where}: {row.metric} = {row.value} is not a finite non-negative score; re-run that job"
            )
        key = (
            row.stage,
            row.model_kind,
            row.model,
            row.method,
            json.dumps(row.setting, sort_keys=True, default=str),
            group_of(row),
            row.metric,
        )
        if key in seen:
            raise SpeechmergeError(
                f"{where}: {row.metric} given twice; a store holds one score per model, group and metric"
            )
        seen.add(key)
    bases = sorted({row.model for row in rows if row.model_kind == "base"})
    if len(bases) > 1:
        raise SpeechmergeError(
            f"{source}: scores of {len(bases)} base models ({', '.join(bases)}); a study report compares merges of one base"
        )


def _fill(line: Line, rows: Iterable[ScoreRow]) -> Line:
    for row in rows:
        line.scores[(group_of(row), row.metric)] = row.value
        line.utterances[group_of(row)] = row.utterances
    return line


def merge_lines(rows: list[ScoreRow], stage: Stage, selected_only: bool) -> list[Line]:
    """One line per (method, setting) of the merges at `stage`; with `selected_only` one per method
    (its chosen setting), refusing a method with two chosen settings."""
    by_key: dict[tuple[str, str], list[ScoreRow]] = {}
    for row in rows:
        if row.model_kind == "merge" and row.stage == stage and (row.selected or not selected_only):
            name = row.method or row.model
            by_key.setdefault((name, json.dumps(row.setting, sort_keys=True, default=str)), []).append(row)
    names = [name for name, _ in by_key]
    if selected_only:
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise SpeechmergeError(
                f"{stage} scores: method {doubled[0]!r} has more than one selected setting; a method chooses one setting on validation"
            )
    return [
        _fill(Line(name, "merge", members[0].setting, all(r.selected for r in members)), members)
        for (name, _), members in sorted(by_key.items())
    ]


def names_group(expert: str, group: Group) -> bool:
    """Whether an expert's name is some of the group's labels joined by "-" (how `speechmerge study`
    names the experts it trains: `es`, `es-transcribe`, `law`), i.e. it was trained for the group."""
    labels = (group.language, group.task, group.domain)
    return any(expert == "-".join(chosen) for size in (1, 2, 3) for chosen in itertools.permutations(labels, size))


def experts_line(rows: list[ScoreRow]) -> Line:
    """Each group scored by its own expert (named for it, `names_group`); where no expert is named
    for a group, by the best expert scored on it, and the group is counted in `oracle_groups`."""
    line = Line("experts", "experts")
    scored_by: dict[Group, set[str]] = {}
    for row in rows:
        scored_by.setdefault(group_of(row), set()).add(row.model)
    own = {group for group, names in scored_by.items() if any(names_group(name, group) for name in names)}
    for row in rows:
        group, key = group_of(row), (group_of(row), row.metric)
        if group in own and not names_group(row.model, group):
            continue
        held = line.scores.get(key)
        if held is None or (row.value > held if METRICS[row.metric].higher_is_better else row.value < held):
            line.scores[key] = row.value
            line.utterances[group] = row.utterances
    line.oracle_groups = {group for group, names in scored_by.items() if group not in own and len(names) > 1}
    return line


def reference_lines(rows: list[ScoreRow], stage: Stage) -> list[Line]:
    """The base, the experts (`experts_line`) and each baseline, at `stage`."""
    at_stage = [row for row in rows if row.stage == stage]
    base = [
        _fill(Line(name, "base"), [r for r in at_stage if r.model_kind == "base" and r.model == name])
        for name in sorted({r.model for r in at_stage if r.model_kind == "base"})
    ]
    experts = experts_line([row for row in at_stage if row.model_kind == "expert"])
    baselines = [
        _fill(Line(name, "baseline"), [r for r in at_stage if r.model_kind == "baseline" and r.model == name])
        for name in sorted({r.model for r in at_stage if r.model_kind == "baseline"})
    ]
    return base + ([experts] if experts.scores else []) + baselines


def groups_with(lines: list[Line], scope: str, metric: str) -> list[Group]:
    """Every group of `scope` any line has a `metric` score on, sorted."""
    return sorted({group for line in lines for group, name in line.scores if group.scope == scope and name == metric})


def metrics_in(lines: list[Line], scope: str) -> list[str]:
    """The metrics scored in `scope`, in METRICS order."""
    present = {name for line in lines for group, name in line.scores if group.scope == scope}
    return [name for name in METRICS if name in present]


def primary_groups(lines: list[Line], scope: str) -> list[tuple[Group, str]]:
    """Each group of `scope` with its primary metric."""
    metrics: dict[Group, set[str]] = {}
    for line in lines:
        for group, name in line.scores:
            if group.scope == scope:
                metrics.setdefault(group, set()).add(name)
    chosen = [(group, primary_metric(group.task, names)) for group, names in sorted(metrics.items())]
    return [(group, name) for group, name in chosen if name is not None]


def average(line: Line, cells: list[tuple[Group, str]]) -> Average | None:
    """The macro average of the line's scores on `cells` (None when it has none of them)."""
    values = [line.get(group, metric) for group, metric in cells]
    kept = [v for v in values if v is not None]
    return Average(fmean(kept), len(kept), len(cells)) if kept else None


def _normalised_mean(per_group: list[float | None], expected: int) -> Average | None:
    kept = [v for v in per_group if v is not None and not math.isnan(v)]
    return Average(fmean(kept), len(kept), expected) if kept else None


def ratios(line: Line, reference: Line, cells: list[tuple[Group, str]]) -> list[float | None]:
    """s(line) / s(reference) per cell (relative_scores.vs_expert with `reference` as the expert); None
    where either score is missing or the reference scores 0."""
    out = []
    for group, metric in cells:
        mine, theirs = line.get(group, metric), reference.get(group, metric)
        ratio = vs_expert(metric, mine, theirs) if mine is not None and theirs is not None else math.nan
        out.append(None if math.isnan(ratio) else ratio)
    return out


def vs_reference(line: Line, reference: Line, cells: list[tuple[Group, str]]) -> Average | None:
    """Mean over cells of s(line) / s(reference)."""
    return _normalised_mean(ratios(line, reference, cells), len(cells))


def mean_gain_kept(line: Line, experts: Line, base: Line, cells: list[tuple[Group, str]]) -> Average | None:
    """Mean over cells of relative_scores.gain_kept: the share of the expert's gain over the base kept."""
    gains = []
    for group, metric in cells:
        values = (line.get(group, metric), experts.get(group, metric), base.get(group, metric))
        gains.append(gain_kept(metric, *values) if None not in values else None)
    return _normalised_mean(gains, len(cells))
