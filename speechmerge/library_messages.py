"""What the libraries speechmerge drives (transformers, torch) print: hidden by default, shown with
`speechmerge --debug`, so that a user reads speechmerge's own lines."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG_VARIABLE = "SPEECHMERGE_DEBUG"  # set by `speechmerge --debug`; study workers inherit it


@contextmanager
def library_messages() -> Iterator[None]:
    """Hide transformers' and torch's warnings and progress bars inside the block, unless
    `SPEECHMERGE_DEBUG` is set. Callers pass what transformers asks for (an attention mask, one
    token budget), so what this hides are notes about the libraries' own internals (deprecations,
    loading progress), not about the user's input."""
    if os.environ.get(DEBUG_VARIABLE):
        yield
        return
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
