"""`speechmerge convert`: one entry point for every format change.

The source format is recognised from what it is: `builtin:<name>`, a directory with
`model.bin` (CTranslate2; also `model.bin.part1`, ...), a `.pt` file (openai-whisper), or a
directory with `config.json` (Hugging Face). `to="hf"` writes a Hugging Face Whisper
directory; `to="ct2"` writes a CTranslate2 one (any source goes through Hugging Face first).
"""

from __future__ import annotations

from pathlib import Path

from speechmerge.errors import SpeechmergeError

FORMATS = ("hf", "ct2")


def detect_format(source: str) -> str:
    """'builtin', 'ct2', 'openai' or 'hf'."""
    if source.startswith("builtin:"):
        return "builtin"
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".pt":
        return "openai"
    if path.is_dir() and ((path / "model.bin").is_file() or any(path.glob("model.bin.part*"))):
        return "ct2"
    if path.is_dir() and (path / "config.json").is_file():
        return "hf"
    if not path.exists():
        raise SpeechmergeError(
            f"{path}: no such file or directory; give builtin:whisper-base, a CTranslate2 directory, an openai-whisper .pt or a Hugging Face directory"
        )
    raise SpeechmergeError(
        f"{path}: not a recognised Whisper model (no model.bin, no config.json, not a .pt file); "
        "give builtin:whisper-base, a CTranslate2 directory, an openai-whisper .pt or a Hugging Face directory"
    )


def convert_model(
    source: str,
    output: Path,
    to: str = "hf",
    quantization: str = "float16",
    dtype: str = "float32",
    tokenizer: Path | None = None,
    force: bool = False,
) -> Path:
    """Convert `source` into `output` (format `to`); refuses an existing output unless `force`."""
    from speechmerge.fsutil import refuse_existing

    if to not in FORMATS:
        raise SpeechmergeError(f"--to {to!r}: expected one of {', '.join(FORMATS)}")
    output = Path(output)
    refuse_existing(output, force)
    kind = detect_format(source)
    if to == "ct2":
        from speechmerge.checkpoints.export import export_ct2
        from speechmerge.checkpoints.resolve import resolve_model_dir

        return export_ct2(resolve_model_dir(source), output, quantization=quantization, force=force)
    if kind == "hf":
        raise SpeechmergeError(
            f"{source}: already a Hugging Face Whisper directory; use --to ct2 to export it to CTranslate2"
        )
    if kind == "openai":
        from speechmerge.checkpoints.openai import convert_openai

        return convert_openai(Path(source), output, dtype=dtype, force=force, tokenizer_source=tokenizer)
    from speechmerge.checkpoints.builtin import builtin_files
    from speechmerge.checkpoints.ct2 import Ct2Files, convert_ct2

    files = builtin_files(source.removeprefix("builtin:")) if kind == "builtin" else Ct2Files.of_directory(Path(source))
    return convert_ct2(files, output, dtype=dtype, force=force, tokenizer_source=tokenizer)
