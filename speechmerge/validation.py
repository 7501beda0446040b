"""What the recipe, study and method-parameter models share: a strict pydantic base, the YAML
file reader, and one-line messages from pydantic's validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from speechmerge.errors import SpeechmergeError


class Strict(BaseModel):
    """A pydantic model whose unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def read_yaml_file(path: Path, what: str) -> Any:
    """The parsed content of a YAML file; a missing file or bad YAML is one line naming the file.

    `what` names the kind of file in the message ("recipe", "study recipe")."""
    path = Path(path)
    if not path.is_file():
        raise SpeechmergeError(f"{path}: no such {what} file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SpeechmergeError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None


def describe_validation_error(error, where: str, method: str | None = None, prefix: str = "") -> str:
    """One line from a pydantic ValidationError: the key, what is wrong, what was given."""
    first = error.errors()[0]
    key = prefix + ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = "unknown key" + (f" for method {method!r}" if method else "")
    else:
        message = first["msg"]
    more = len(error.errors()) - 1
    given = f" (given: {first['input']!r})" if first["type"] != "extra_forbidden" and "input" in first else ""
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {key}: {message}{given}{tail}"
