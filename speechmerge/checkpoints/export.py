"""Hugging Face Whisper -> CTranslate2, so that a merged model can be served with faster-whisper.

The conversion is CTranslate2's own `TransformersConverter` (the `ct2` extra); speechmerge
only supplies a complete input directory, copies the tokenizer and feature-extractor files
faster-whisper reads, and writes the result atomically. Quantisation choices are
CTranslate2's: weights stored as float32, float16, bfloat16, int16 or int8 (int8_float16 etc.
keep the non-quantised weights in the second type).
"""

from __future__ import annotations

from pathlib import Path

from speechmerge.errors import SpeechmergeError

QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16")
COPIED_FILES = ("tokenizer.json", "preprocessor_config.json")


def export_ct2(model_dir: Path, target: Path, quantization: str = "float16", force: bool = False) -> Path:
    """Write the CTranslate2 model of the Hugging Face Whisper directory `model_dir` to `target`."""
    from speechmerge.fsutil import atomic_directory, refuse_existing

    model_dir, target = Path(model_dir), Path(target)
    if quantization not in QUANTIZATIONS:
        raise SpeechmergeError(f"quantization {quantization!r}: expected one of {', '.join(QUANTIZATIONS)}")
    refuse_existing(target, force)
    try:
        import ctranslate2
    except ImportError:
        raise SpeechmergeError(
            "export to CTranslate2 needs the ctranslate2 package; install it with: pip install 'speechmerge[ct2]'"
        ) from None
    if not (model_dir / "tokenizer.json").is_file():
        raise SpeechmergeError(
            f"{model_dir}: missing tokenizer.json, which faster-whisper needs next to model.bin; "
            "copy the base model's tokenizer files into the directory first"
        )
    copied = [name for name in COPIED_FILES if (model_dir / name).is_file()]
    with atomic_directory(target, force=force) as tmp:
        converter = ctranslate2.converters.TransformersConverter(str(model_dir), copy_files=copied)
        try:
            converter.convert(str(tmp), quantization=quantization, force=True)
        except (ValueError, RuntimeError, OSError) as error:
            raise SpeechmergeError(f"{model_dir}: CTranslate2's converter failed ({error})") from None
    return target
