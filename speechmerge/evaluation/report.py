"""An evaluation as files: a Markdown table to paste into a paper, CSV, JSON and JSONL predictions.

`write_result(result, directory)` writes, atomically (temp dir + rename):

- `predictions.jsonl`: one line per utterance (reference, hypothesis, normalised texts, edits);
- `summary.json`: the model, its key, the options, the timing, every group and macro score,
  the sacrebleu signatures;
- `summary.md`: the Markdown table (`markdown_table`), WER/CER/LID in percent, BLEU/chrF 0-100,
  each score with its 95 % bootstrap interval;
- `summary.csv`: the same rows with WER/CER/LID as fractions, each interval as `<metric>_low`
  and `<metric>_high`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from speechmerge.evaluation.api import EvalResult
from speechmerge.evaluation.metrics import METRICS
from speechmerge.evaluation.normalizers import BASIC, ENGLISH

CSV_COLUMNS = (
    "language",
    "task",
    "domain",
    "split",
    "utterances",
    "normaliser",
    "wer",
    "cer",
    "bleu",
    "chrf",
    "language_id",
    *(f"{metric}_{end}" for metric in METRICS for end in ("low", "high")),
)
PERCENT = ("wer", "cer", "language_id")
NORMALISER_NOTE = {
    ENGLISH: "Whisper EnglishTextNormalizer (OpenAI spelling map)",
    BASIC: "Whisper BasicTextNormalizer",
}


def _cell(name: str, value: Optional[float], interval: Optional[tuple[float, float]] = None) -> str:
    if value is None:
        return "–"
    scale = 100 if name in PERCENT else 1
    text = f"{scale * value:.2f}"
    return text + (f" [{scale * interval[0]:.2f}, {scale * interval[1]:.2f}]" if interval else "")


def _interval_columns(score) -> dict[str, Optional[float]]:
    return {
        f"{metric}_{end}": score.intervals[metric][index] if metric in score.intervals else None
        for metric in METRICS
        for index, end in enumerate(("low", "high"))
    }


def markdown_table(result: EvalResult) -> str:
    """Rows (language, task, domain, split) and macro averages; WER/CER/LID in %, BLEU/chrF 0-100."""
    header = "| language | task | domain | split | n | WER % | CER % | BLEU | chrF | LID % |"
    lines = [
        f"**{result.model}** ({result.options.decode.describe()}; model key {result.model_key[:12]})",
        "",
        header,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    metrics = ("wer", "cer", "bleu", "chrf", "language_id")
    for g in result.groups:
        cells = " | ".join(_cell(name, g.metric(name), g.intervals.get(name)) for name in metrics)
        lines.append(f"| {g.language} | {g.task} | {g.domain} | {g.split} | {g.utterances} | {cells} |")
    for m in result.macro:
        cells = " | ".join(_cell(name, getattr(m, name), m.intervals.get(name)) for name in metrics)
        lines.append(f"| **macro** | | | {m.split} | {m.groups} groups | {cells} |")
    used = sorted({g.normaliser for g in result.groups if g.normaliser})
    notes = (
        [
            "",
            "WER/CER after "
            + "; ".join(
                f"{NORMALISER_NOTE[n]} ({', '.join(sorted({g.language for g in result.groups if g.normaliser == n}))})"
                for n in used
            ),
        ]
        if used
        else [""]
    )
    if result.bleu_signature:
        notes.append(f"BLEU: sacrebleu {result.bleu_signature}; chrF: sacrebleu {result.chrf_signature}")
    notes.append("LID: share of clips whose detected language is the manifest's. Macro: unweighted mean over groups.")
    notes.append(
        f"[low, high]: {100 * result.options.confidence:g} % bootstrap interval (1000 resamples of the utterances, seeded; macro: each group "
        "resampled on its own); none for a group of fewer than 2 utterances. Compare two models: speechmerge compare."
    )
    return "\n".join(lines + notes) + "\n"


def csv_table(result: EvalResult) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    plain = [c for c in CSV_COLUMNS if not c.endswith(("_low", "_high"))]
    for g in result.groups:
        writer.writerow({**{name: getattr(g, name) for name in plain}, **_interval_columns(g)})
    for m in result.macro:
        writer.writerow(
            {
                "language": "macro",
                "split": m.split,
                "utterances": m.groups,
                **{n: getattr(m, n) for n in ("wer", "cer", "bleu", "chrf", "language_id")},
                **_interval_columns(m),
            }
        )
    return out.getvalue()


def write_result(result: EvalResult, directory: Path, force: bool = False) -> Path:
    """Write the evaluation's files into `directory` (refused if it exists, unless `force`)."""
    from speechmerge.fsutil import atomic_directory

    with atomic_directory(Path(directory), force=force) as tmp:
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as handle:
            for prediction in result.predictions:
                handle.write(prediction.model_dump_json() + "\n")
        summary = result.model_dump(mode="json", exclude={"predictions"})
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "summary.md").write_text(markdown_table(result), encoding="utf-8")
        (tmp / "summary.csv").write_text(csv_table(result), encoding="utf-8")
    return Path(directory)
