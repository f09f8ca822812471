"""What produced a run: the clapkit version and, in a git checkout, the commit.

Written as comment lines at the top of a run's resolved ``recipe.toml`` (comments, so the file
still loads as the same recipe, and ``--resume`` compares recipes, not builds).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from . import __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout clapkit is imported from (``+dirty`` with uncommitted
    changes to tracked files), or None outside a git checkout or without git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if not commit:
        return None
    return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def build_info() -> dict[str, str]:
    """``{"clapkit_version": ..., "git_commit": ...}`` (the commit only in a checkout)."""
    out = {"clapkit_version": __version__}
    commit = git_commit()
    if commit:
        out["git_commit"] = commit
    return out


def recipe_header() -> str:
    """Comment lines for the top of a resolved recipe."""
    return "".join(f"# {k} = {v}\n" for k, v in build_info().items()) + "\n"
