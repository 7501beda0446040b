"""`speechmerge compare A B`: two `speechmerge eval` folders, compared group by group from their
predictions.jsonl (no decoding), or two models with `--data` (decoded through the prediction
cache): both scores with intervals, B − A with its interval, the p-value
of each test and one verdict line per group and macro average (`speechmerge.evaluation.significance`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.bootstrap import CONFIDENCE, RESAMPLES, SEED, group_seed
from speechmerge.evaluation.metrics import METRICS
from speechmerge.evaluation.scoring import ALL_SPLITS, Prediction
from speechmerge.evaluation.significance import PERCENT, Comparison, compare_group, compare_macro
from speechmerge.evaluation.statistics import UtteranceStatistics, group_statistics

Group = tuple[str, str, str, str]


@dataclass(frozen=True)
class Evaluation:
    """An eval folder's model name and predictions."""

    name: str
    folder: Path
    predictions: list[Prediction]


def read_evaluation(folder: Path) -> Evaluation:
    """The predictions (and model name) of a `speechmerge eval` output folder."""
    folder = Path(folder)
    path = folder / "predictions.jsonl"
    if not path.is_file():
        raise SpeechmergeError(
            f"{folder}: no predictions.jsonl here; give a folder written by `speechmerge eval` (its -o/--output), "
            "or compare two models with --data"
        )
    predictions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            predictions.append(Prediction.model_validate_json(line))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise SpeechmergeError(
                f"{path}:{number}: {where}: {first['msg']}; re-run `speechmerge eval` to write it again"
            ) from None
    if not predictions:
        raise SpeechmergeError(f"{path}: no predictions; re-run `speechmerge eval`")
    summary = folder / "summary.json"
    name = json.loads(summary.read_text(encoding="utf-8")).get("model") if summary.is_file() else None
    return Evaluation(name or folder.name, folder, predictions)


def evaluate_model(model: str, data: Sequence[Path]) -> Evaluation:
    """A model evaluated on `data` with the default decoding options, through the prediction cache
    (what `speechmerge eval MODEL DATA...` would write into predictions.jsonl)."""
    from speechmerge.evaluation.api import evaluate

    result = evaluate(model, list(data), progress=True)
    return Evaluation(result.model, Path(model), result.predictions)


def group_label(group: Group) -> str:
    """`language/task[/domain][/split]`, leaving out labels a manifest did not give."""
    return "/".join(part for part in group if part != "-")


def _by_group(predictions: Sequence[Prediction]) -> dict[Group, list[Prediction]]:
    groups: dict[Group, list[Prediction]] = defaultdict(list)
    for prediction in predictions:
        groups[prediction.group].append(prediction)
    return groups


def _check_same_groups(a: dict[Group, list[Prediction]], b: dict[Group, list[Prediction]]) -> None:
    """Refuse groups one side has and the other not: a transcribe/translate mix, or other utterances."""
    for group in sorted(set(a) ^ set(b)):
        mine, other = ("A", "B") if group in a else ("B", "A")
        members = (a if group in a else b)[group]
        task, ids_here = group[1], {p.id for p in members}
        other_side = b if group in a else a
        mixed = [g for g, found in other_side.items() if g[1] != task and ids_here & {p.id for p in found}]
        if mixed:
            raise SpeechmergeError(
                f"{group_label(group)}: {mine} scores these utterances for {task}, {other} for {mixed[0][1]}; "
                "transcribe scores (WER) and translate scores (BLEU) cannot be compared: evaluate both for the same task"
            )
        ids = ", ".join(repr(p.id) for p in members[:3]) + (", ..." if len(members) > 3 else "")
        raise SpeechmergeError(
            f"{group_label(group)}: only {mine} has this group ({ids} only in {mine}); "
            "the two evaluations are not on the same utterances: evaluate both models on the same data"
        )


@dataclass
class CompareResult:
    """Every comparison of B with A, and the groups too small to test."""

    name_a: str
    name_b: str
    groups: list[Comparison] = field(default_factory=list)
    macro: list[Comparison] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[Comparison]:
        return self.groups + self.macro


def compare_evaluations(
    a: Evaluation,
    b: Evaluation,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    by_speaker: bool = False,
) -> CompareResult:
    """B against A on every group and metric both scored, then macro averages per split (and over
    all splits) of each metric over the groups that could be tested."""
    if not 0 < confidence < 1:
        raise SpeechmergeError(f"--confidence {confidence}: give a level between 0 and 1, e.g. 0.95")
    if resamples < 100:
        raise SpeechmergeError(f"--resamples {resamples}: use at least 100 (1000 is the default)")
    groups_a, groups_b = _by_group(a.predictions), _by_group(b.predictions)
    _check_same_groups(groups_a, groups_b)
    result = CompareResult(a.name, b.name)
    tested: dict[tuple[str, str], list[tuple[UtteranceStatistics, UtteranceStatistics, list[int]]]] = defaultdict(list)
    for group in sorted(groups_a):
        label = group_label(group)
        for metric in METRICS:
            stats_a, stats_b = group_statistics(groups_a[group], metric), group_statistics(groups_b[group], metric)
            if stats_a is None or stats_b is None:
                continue
            if len(stats_a.ids) < 2:
                result.too_small.append(
                    f"{label}: {len(stats_a.ids)} utterance, no interval or test ({metric}); a group needs at least 2"
                )
                continue
            draws = group_seed(seed, group)
            result.groups.append(
                compare_group(label, stats_a, stats_b, confidence, resamples, seed, by_speaker, draws=draws)
            )
            tested[(group[3], metric)].append((stats_a, stats_b, draws))
    splits = sorted({split for split, _ in tested})
    for split in splits + ([ALL_SPLITS] if len(splits) > 1 else []):
        for metric in METRICS:
            found = [p for (s, m), kept in tested.items() if m == metric and split in (s, ALL_SPLITS) for p in kept]
            if len(found) > 1:
                label = f"macro {split}" if split != "-" else "macro"
                pairs, draws = [(mine, theirs) for mine, theirs, _ in found], [d for _, _, d in found]
                result.macro.append(compare_macro(label, pairs, confidence, resamples, seed, by_speaker, draws))
    if not result.groups:
        raise SpeechmergeError(
            f"{a.folder} and {b.folder}: no group has 2 or more utterances scored by both; nothing can be tested"
        )
    return result


def _value(metric: str, value: float) -> str:
    return f"{100 * value:.2f}" if PERCENT[metric] else f"{value:.2f}"


def _interval(metric: str, low: float, high: float) -> str:
    return f"[{_value(metric, low)}, {_value(metric, high)}]"


def _tests(comparison: Comparison) -> str:
    return "; ".join(f"{name} {p:.4f}" for name, p in comparison.tests.items())


def markdown(result: CompareResult) -> str:
    """The table (scores in %, BLEU/chrF 0-100; B − A in points) and one verdict line per row."""
    confidence = f"{100 * result.all[0].confidence:g} %"
    lines = [
        f"**A** = {result.name_a}, **B** = {result.name_b}; intervals: {confidence} bootstrap",
        "",
        "| group | metric | n | A | A interval | B | B interval | B − A | interval | p-values |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in result.all:
        n = f"{c.utterances}" + (f" ({c.groups} groups)" if c.groups > 1 else "")
        lines.append(
            f"| {c.label} | {c.metric} | {n} | {_value(c.metric, c.score_a)} | "
            f"{_interval(c.metric, c.interval_a.low, c.interval_a.high)} | {_value(c.metric, c.score_b)} | "
            f"{_interval(c.metric, c.interval_b.low, c.interval_b.high)} | {_value(c.metric, c.paired.difference)} | "
            f"{_interval(c.metric, c.paired.interval.low, c.paired.interval.high)} | {_tests(c)} |"
        )
    lines += ["", *(c.verdict("A", "B") for c in result.all)]
    lines += [f"note: {line}" for line in result.too_small]
    return "\n".join(lines) + "\n"


def as_records(result: CompareResult) -> list[dict]:
    """One flat record per comparison (scores as fractions for WER/CER, 0-100 for BLEU/chrF)."""
    return [
        {
            "group": c.label,
            "metric": c.metric,
            "utterances": c.utterances,
            "groups": c.groups,
            "confidence": c.confidence,
            "a": c.score_a,
            "a_low": c.interval_a.low,
            "a_high": c.interval_a.high,
            "b": c.score_b,
            "b_low": c.interval_b.low,
            "b_high": c.interval_b.high,
            "difference": c.paired.difference,
            "difference_low": c.paired.interval.low,
            "difference_high": c.paired.interval.high,
            "probability_b_better": c.paired.probability_of_improvement,
            "minimum_detectable_difference": c.minimum_detectable,
            "p_values": dict(c.tests),
            "significant": c.significant,
            "verdict": c.verdict("A", "B"),
        }
        for c in result.all
    ]


def as_json(result: CompareResult) -> str:
    return json.dumps(
        {"a": result.name_a, "b": result.name_b, "comparisons": as_records(result), "not_tested": result.too_small},
        indent=1,
        ensure_ascii=False,
    )


def as_csv(result: CompareResult) -> str:
    records = as_records(result)
    tests = list(dict.fromkeys(name for r in records for name in r["p_values"]))
    out = io.StringIO()
    columns = [k for k in records[0] if k != "p_values"] + [f"p {name}" for name in tests]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        p_values = record.pop("p_values")
        writer.writerow({**record, **{f"p {name}": p_values.get(name) for name in tests}})
    return out.getvalue()
