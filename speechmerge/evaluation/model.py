"""The model under evaluation: a Hugging Face Whisper directory, what it can decode, and its key.

`open_eval_model(spec)` accepts everything `checkpoints.resolve.resolve_model_dir` does
(directories, `builtin:whisper-base`, CTranslate2 directories, `.pt` files, hub ids) and
checks what decoding needs: a Whisper config, weights, a tokenizer and a generation config
with the language and task tokens. Its `key` is a SHA-256 over the weight files and every
file that changes decoding (config, generation config, tokenizer, feature extractor), so a
model's predictions can be cached and found again under any path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from speechmerge.errors import SpeechmergeError

DECODING_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
)
TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class EvalModel:
    """A Whisper directory ready to decode, with the language and task tokens it knows."""

    directory: Path
    label: str
    key: str
    languages: frozenset[str]  # Whisper language codes with a token in the vocabulary
    tasks: frozenset[str]
    multilingual: bool
    max_target_positions: int
    num_mel_bins: int

    def check_can_decode(self, language: str, task: str, where: str) -> None:
        """Raise if the model has no token for `language` or `task`; `where` names the data."""
        if task not in self.tasks:
            raise SpeechmergeError(
                f"{where}: task {task!r} but {self.directory} has no <|{task}|> token "
                f"({'an English-only model' if not self.multilingual else 'its generation_config.json lists ' + ', '.join(sorted(self.tasks))}); "
                "evaluate this data on a multilingual Whisper or drop its translate lines"
            )
        if language not in self.languages:
            raise SpeechmergeError(
                f"{where}: language {language!r} has no token in {self.directory} "
                f"({'an English-only model' if not self.multilingual else 'not in its lang_to_id'}); "
                "evaluate this data on a model that knows the language"
            )


def open_eval_model(spec: str | Path) -> EvalModel:
    """Resolve `spec` to a local Whisper directory and check that it can be decoded."""
    from speechmerge.checkpoints.hf import HFCheckpoint, files_hash
    from speechmerge.checkpoints.resolve import resolve_model_dir

    directory = resolve_model_dir(spec)
    checkpoint = HFCheckpoint(directory)  # explains a directory that is not Whisper or has no weights
    if not (directory / "tokenizer.json").is_file():
        raise SpeechmergeError(
            f"{directory}: no tokenizer.json; decoding needs the Whisper tokenizer next to the weights; "
            "copy tokenizer.json (and tokenizer_config.json) from the base model into the directory"
        )
    generation = _generation_config(directory)
    multilingual = bool(generation.get("is_multilingual", bool(generation.get("lang_to_id"))))
    if multilingual:
        languages = frozenset(token.strip("<|>") for token in generation.get("lang_to_id", {}))
        tasks = frozenset(task for task in generation.get("task_to_id", {}) if task in TASKS)
        if not languages or "transcribe" not in tasks:
            raise SpeechmergeError(
                f"{directory / 'generation_config.json'}: a multilingual model needs lang_to_id and task_to_id; "
                "copy generation_config.json from the base model"
            )
    else:
        languages, tasks = frozenset({"en"}), frozenset({"transcribe"})
    _check_start_token(directory, generation)
    config = checkpoint.config
    side_files = [directory / name for name in DECODING_FILES if (directory / name).is_file()]
    return EvalModel(
        directory=directory,
        label=Path(str(spec)).name or str(spec),
        key=files_hash(checkpoint.weight_files() + side_files),
        languages=languages,
        tasks=tasks,
        multilingual=multilingual,
        max_target_positions=int(config.get("max_target_positions", 448)),
        num_mel_bins=int(config.get("num_mel_bins", 80)),
    )


def _generation_config(directory: Path) -> dict:
    path = directory / "generation_config.json"
    if not path.is_file():
        raise SpeechmergeError(
            f"{directory}: no generation_config.json; decoding needs Whisper's language and task token maps; "
            "copy generation_config.json from the base model into the directory"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SpeechmergeError(
            f"{path}: not valid JSON ({error}); copy generation_config.json from the base model"
        ) from None


def _check_start_token(directory: Path, generation: dict) -> None:
    """Decoding must start from `<|startoftranscript|>`; a config pointing elsewhere decodes garbage."""
    tokenizer = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])}
    expected, actual = ids.get("<|startoftranscript|>"), generation.get("decoder_start_token_id")
    if expected is not None and actual != expected:
        raise SpeechmergeError(
            f"{directory / 'generation_config.json'}: decoder_start_token_id is {actual}, but the tokenizer's "
            f"<|startoftranscript|> is {expected}; set decoder_start_token_id to {expected} (in config.json too)"
        )


def check_data(model: EvalModel, items: Iterable[tuple[str, str, str]]) -> None:
    """Every (language, task, where) must be decodable by `model`; the first that is not raises."""
    seen = set()
    for language, task, where in items:
        if (language, task) not in seen:
            seen.add((language, task))
            model.check_can_decode(language, task, where)
