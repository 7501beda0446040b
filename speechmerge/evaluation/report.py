"""An evaluation as files: a Markdown table to paste into a paper, CSV, JSON and JSONL predictions.

`write_result(result, directory)` writes, atomically (temp dir + rename):

- `predictions.jsonl`: one line per utterance (reference, hypothesis, normalised texts, edits);
- `summary.json`: the model, its key, the options, the timing, every group and macro score,
  the sacrebleu signatures;
- `summary.md`: the Markdown table (`markdown_table`), WER/CER/LID in percent, BLEU/chrF 0-100;
- `summary.csv`: the same rows with WER/CER/LID as fractions.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from speechmerge.evaluation.api import EvalResult
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
)
PERCENT = ("wer", "cer", "language_id")
NORMALISER_NOTE = {
    ENGLISH: "Whisper EnglishTextNormalizer (OpenAI spelling map)",
    BASIC: "Whisper BasicTextNormalizer",
}


def _cell(name: str, value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if name in PERCENT else f"{value:.2f}"


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
        cells = " | ".join(_cell(name, g.metric(name)) for name in metrics)
        lines.append(f"| {g.language} | {g.task} | {g.domain} | {g.split} | {g.utterances} | {cells} |")
    for m in result.macro:
        cells = " | ".join(_cell(name, getattr(m, name)) for name in metrics)
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
    return "\n".join(lines + notes) + "\n"


def csv_table(result: EvalResult) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for g in result.groups:
        writer.writerow({name: getattr(g, name) for name in CSV_COLUMNS})
    for m in result.macro:
        writer.writerow(
            {
                "language": "macro",
                "split": m.split,
                "utterances": m.groups,
                **{n: getattr(m, n) for n in ("wer", "cer", "bleu", "chrf", "language_id")},
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
