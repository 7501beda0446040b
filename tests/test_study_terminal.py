"""The table a study prints when it ends: every reference row and the best merges by the mean
normalised score against the experts, computed here by hand (s = 1 - WER or BLEU, s(m)/s(e))."""

from __future__ import annotations

from statistics import fmean

from speechmerge.study.rows import ScoreRow
from speechmerge.study.terminal import main_table_text

GROUPS = [("es", "transcribe", "wer"), ("es", "translate", "bleu")]
EXPERT = {"wer": 0.20, "bleu": 30.0}
BASE = {"wer": 0.50, "bleu": 10.0}
# 12 merges whose quality order differs from their names' order
MERGES = {f"m{i:02d}": {"wer": 0.20 + 0.02 * ((5 * i) % 12), "bleu": 18.0 + (7 * i) % 12} for i in range(12)}


def row(kind: str, model: str, task: str, metric: str, value: float, method: str | None = None) -> ScoreRow:
    return ScoreRow(
        job=f"{model}:{task}",
        model_kind=kind,
        model=model,
        method=method,
        stage="test",
        scope="in_domain",
        evaluation=f"es.{task}",
        language="es",
        task=task,
        metric=metric,
        value=value,
        utterances=8,
    )


def rows() -> list[ScoreRow]:
    out = []
    for language, task, metric in GROUPS:
        out += [row("base", "whisper-base", task, metric, BASE[metric])]
        out += [row("expert", f"{language}-{task}", task, metric, EXPERT[metric])]
        out += [row("baseline", "joint", task, metric, (BASE[metric] + EXPERT[metric]) / 2)]
        out += [row("merge", name, task, metric, scores[metric], method=name) for name, scores in MERGES.items()]
    return out


def vs_experts(scores: dict[str, float]) -> float:
    return fmean([(1 - scores["wer"]) / (1 - EXPERT["wer"]), scores["bleu"] / EXPERT["bleu"]])


def parse(text: str) -> list[list[str]]:
    """The Markdown table's body rows as lists of cells, emphasis stripped."""
    body = [line for line in text.splitlines() if line.startswith("|")][2:]
    return [[cell.strip().strip("*") for cell in line.strip("|").split("|")] for line in body]


def test_the_printed_table_holds_the_references_and_the_best_merges_in_order():
    text = main_table_text(rows(), top=5)
    table = parse(text)
    header = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("|")).strip("|").split("|")]
    names = [cells[0] for cells in table]
    assert names[:3] == ["base (whisper-base)", "experts (own sets)", "baseline: joint"]
    expected = sorted(MERGES, key=lambda name: -vs_experts(MERGES[name]))[:5]
    assert names[3:] == expected
    column = header.index("norm. vs experts % ↑")
    assert [float(cells[column]) for cells in table[3:]] == [round(100 * vs_experts(MERGES[n]), 1) for n in expected]
    assert "the 5 best of 12 merges, ranked by norm. vs experts % ↑" in text


def test_nothing_is_printed_before_the_study_has_test_scores():
    validation = [r.model_copy(update={"stage": "validation"}) for r in rows()]
    assert main_table_text(validation) is None
