"""When progress bars are drawn (shared by the training loop, cache builds and commands)."""

from __future__ import annotations

import sys
from typing import TextIO


def progress_off(wanted: bool, stream: TextIO | None = None) -> bool:
    """The ``disable`` of a tqdm bar: off unless ``wanted`` and its stream (stderr, where
    tqdm writes) is a terminal. Redrawn in place on a terminal, a bar written to a log file
    or a pipe is one line per update (thousands per run), so there it is left out."""
    if not wanted:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return True
