"""Errors that the CLI turns into one readable line (exit status 2).

Every user-facing failure derives from :class:`ClapkitError`; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ClapkitError(Exception):
    """A failure caused by the user's input (recipe, data, plugin) rather than by clapkit."""


def user_message(exc: ClapkitError) -> str:
    """The line the CLI prints for ``exc``. A ClapkitError raised in a DataLoader worker
    (``data.num_workers > 0``, e.g. a corrupt frame) comes back re-raised by torch with the
    worker's traceback in its message; the user gets the original one line instead."""
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        _, sep, message = last.partition(": ")
        return f"{message} (in a data loader worker)" if sep else last
    return text


class RecipeError(ClapkitError):
    """A recipe problem, located by file and dotted key."""

    def __init__(self, file: str | None, key: str | None, problem: str,
                 allowed: Iterable[str] | None = None, got: str | None = None) -> None:
        self.file, self.key, self.problem = file, key, problem
        self.allowed = sorted(allowed) if allowed is not None else None
        self.got = got
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or "<recipe>"
        if self.file == "--set" and self.key:
            where = f"--set {self.key}"       # an override: name it as typed
        elif self.key and not where.startswith("--set "):
            where += f": {self.key}"
        msg = f"{where}: {self.problem}"
        if self.allowed is not None:
            close = suggest(self.got, self.allowed) if self.got is not None else None
            if close:
                msg += f"; did you mean '{close}'?"
            msg += f" (allowed: {', '.join(self.allowed) if self.allowed else 'none'})"
        return msg


class UnknownComponentError(ClapkitError):
    """Lookup of a name that no plugin registered for that kind."""

    def __init__(self, kind: str, name: str, known: Iterable[str],
                 broken: Iterable[str] = ()) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = suggest(name, self.known)
        msg = f"unknown {kind} '{name}'"
        if close:
            msg += f"; did you mean '{close}'?"
        msg += f" (known {kind} names: {', '.join(self.known) or 'none'})"
        broken = list(broken)
        if broken:
            msg += "; plugins that failed to load and may provide it: " + "; ".join(broken)
        super().__init__(msg)


class DuplicateComponentError(ClapkitError):
    """Two providers registered the same (kind, name)."""


def suggest(word: str | None, options: Iterable[str]) -> str | None:
    """Closest option to ``word`` (difflib ratio >= 0.6), or None."""
    if word is None:
        return None
    matches = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return matches[0] if matches else None
