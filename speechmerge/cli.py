"""The `speechmerge` command line: one typer app, one sub-command per job.

Heavy libraries (torch, transformers) are imported inside the commands so that
`speechmerge --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from speechmerge.errors import SpeechmergeError

app = typer.Typer(
    name="speechmerge",
    help="Merge fine-tuned Whisper models and measure which merge is best.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


@app.command()
def merge(
    recipe: Path = typer.Argument(..., help="YAML merge recipe (see `speechmerge methods`)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output directory (overrides the recipe's)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    shard_size: Optional[str] = typer.Option(None, help="Largest output shard, e.g. 500MB or 2GB (overrides the recipe's)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto (overrides the recipe's)."),
) -> None:
    """Merge a base Whisper and its fine-tuned experts as a recipe says."""
    from speechmerge.merging.api import merge_from_recipe_file

    merge_from_recipe_file(recipe, output=output, force=force, shard_size=shard_size, device=device)


@app.command()
def methods(
    name: Optional[str] = typer.Argument(None, help="Show one method in full."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown reference (docs/methods.md)."),
) -> None:
    """List every merge method with its parameters, defaults and source."""
    from speechmerge.merging.describe import print_methods

    print_methods(name, markdown=markdown)


@app.command()
def convert(
    source: str = typer.Argument(
        ...,
        help="builtin:whisper-base, a CTranslate2 directory (model.bin), an openai-whisper .pt file, "
        "or (with --to ct2) a Hugging Face Whisper directory.",
    ),
    output: Path = typer.Argument(..., help="Directory to create (refused if it exists, unless --force)."),
    to: str = typer.Option("hf", "--to", help="Output format: hf (Hugging Face Whisper) or ct2 (CTranslate2, for faster-whisper)."),
    quantization: str = typer.Option(
        "float16", help="With --to ct2: float32, float16, bfloat16, int8, int8_float16, int8_float32, int8_bfloat16 or int16."
    ),
    dtype: str = typer.Option("float32", help="With --to hf: weight dtype of the output, float32, float16 or bfloat16."),
    tokenizer: Optional[Path] = typer.Option(
        None, help="Directory or tokenizer.json to use when the source has none; it is checked before use."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
) -> None:
    """Convert a Whisper model between CTranslate2, openai-whisper and Hugging Face formats."""
    from rich.console import Console

    from speechmerge.checkpoints.convert import convert_model

    target = convert_model(source, output, to=to, quantization=quantization, dtype=dtype, tokenizer=tokenizer, force=force)
    Console(stderr=True).print(f"[green]converted[/] {source} -> {target} ({to})", highlight=False)


def main() -> None:
    """Entry point: run the app; user errors become one red line and exit status 2."""
    try:
        app()
    except SpeechmergeError as error:
        if _state["debug"]:
            raise
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
