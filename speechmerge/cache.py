"""Where speechmerge keeps what it builds once and reuses: converted built-in models,
the built-in speech corpus, encoder outputs and predictions.

`$SPEECHMERGE_CACHE` wins; otherwise `$XDG_CACHE_HOME/speechmerge` or `~/.cache/speechmerge`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache root (or a sub-folder of it), created on first use."""
    root = os.environ.get("SPEECHMERGE_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "speechmerge"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
