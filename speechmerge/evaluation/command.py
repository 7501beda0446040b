"""`speechmerge eval`: evaluate, write the files, print the table (the CLI stays a thin wrapper)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.api import LabelFilter, evaluate
from speechmerge.evaluation.options import DecodeOptions, EvalOptions


def default_output(model: str) -> Path:
    """`eval-<model name>` in the current folder."""
    name = Path(model.rstrip("/")).name or model
    return Path("eval-" + re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-"))


def build_options(cer: bool, no_cache: bool, confidence: float = 0.95, **decode) -> EvalOptions:
    """Options from command-line values; an invalid value becomes one clear line."""
    try:
        return EvalOptions(
            decode=DecodeOptions(**{k: v for k, v in decode.items() if v is not None}),
            cer=cer,
            prediction_cache=not no_cache,
            confidence=confidence,
        )
    except ValidationError as error:
        first = error.errors()[0]
        option = "--" + str(first["loc"][-1]).replace("_", "-")
        raise SpeechmergeError(f"{option} {first.get('input')!r}: {first['msg']}") from None


def run_eval_command(
    model: str,
    data: list[Path],
    output: Optional[Path],
    options: EvalOptions,
    labels: LabelFilter,
    skip_bad: bool,
    force: bool,
) -> Path:
    """Evaluate `model` on `data`, write the result under `output` and print its Markdown table."""
    from rich.console import Console

    from speechmerge.evaluation.report import markdown_table, write_result
    from speechmerge.fsutil import refuse_existing

    target = output or default_output(model)
    refuse_existing(target, force)
    result = evaluate(model, data, options, skip_bad=skip_bad, labels=labels, progress=True)
    write_result(result, target, force=force)
    print(markdown_table(result))
    timing = result.timing
    per_clip = f", {timing.seconds_per_decoded_clip:.2f} s/clip" if timing.seconds_per_decoded_clip else ""
    Console(stderr=True).print(
        f"[green]evaluated[/] {timing.utterances} utterances ({timing.decoded} decoded in {timing.decode_seconds:.1f} s{per_clip}, "
        f"{timing.from_cache} from the cache) -> {target}",
        highlight=False,
    )
    return target
