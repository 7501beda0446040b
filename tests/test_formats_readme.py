"""The README's feature list says what the code does: built-in models, formats, method count."""

from __future__ import annotations

import re
from pathlib import Path

from speechmerge.checkpoints.builtin import BUILTIN_MODELS, UNAVAILABLE, builtin_files

README = Path(__file__).resolve().parents[1] / "README.md"
WHISPER_SIZES = ("tiny", "base", "small", "medium", "large", "turbo")


def readme_sentences() -> list[str]:
    text = " ".join(README.read_text(encoding="utf-8").split())
    return re.split(r"(?<=[.;])\s+", text)


def test_every_builtin_reference_in_the_readme_resolves():
    named = set(re.findall(r"builtin:([\w.-]+)", README.read_text(encoding="utf-8")))
    assert named, "the README names no built-in model"
    assert named <= set(BUILTIN_MODELS), f"named but not built in: {sorted(named - set(BUILTIN_MODELS))}"
    for name in named:
        assert builtin_files(name).parts  # the packages are there: the reference resolves offline


def test_a_size_called_built_in_is_built_in_and_one_that_is_not_is_said_so():
    """Each Whisper size named in a sentence about built-in Whisper must be in BUILTIN_MODELS,
    unless that sentence says it is not built in; and every unavailable size that is named
    is named as such."""
    claims = [s for s in readme_sentences() if "built-in Whisper" in s or "not built in" in s]
    assert claims
    for sentence in claims:
        for size in WHISPER_SIZES:
            if re.search(rf"\b{size}\b", sentence):
                denied = re.search(rf"Whisper {size}\b[^.;]*\bnot built in", sentence)
                name = f"whisper-{size}"
                if denied:
                    assert name not in BUILTIN_MODELS, sentence
                else:
                    assert name in BUILTIN_MODELS and name not in UNAVAILABLE, sentence


def test_the_method_count_is_the_registry_size():
    from speechmerge.merging.registry import all_methods

    count = int(re.search(r"\*\*(\d+) merge methods\*\*", README.read_text(encoding="utf-8")).group(1))
    assert count == len(all_methods())
