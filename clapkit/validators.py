"""attrs validators for recipe values: each names the field and its allowed range.

Used by the core sections (:mod:`clapkit.sections`) and open to plugins. Every numeric
validator here also refuses NaN and infinities (a learning rate of ``inf`` is never meant).
The range a validator allows is kept on it (``lo``/``hi``), so tests can probe each field
just outside its range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import attrs

#: the largest ``run.seed``: numpy takes seeds below 2**32, and derived seeds such as the
#: mixup seed ``seed * 1_000_003 + epoch`` then stay far inside 64 bits
MAX_SEED = 2**32 - 1


@attrs.frozen(repr=False)
class Range:
    """``lo <= value <= hi`` (``<`` where ``lo_open``/``hi_open``); floats must be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo!r}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi!r}")
        return " and ".join(parts) if parts else "finite"

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open
                                             else value > self.hi))

    def __call__(self, inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None and self.optional:
            return
        if not self.ok(value):
            raise ValueError(f"{attr.name} must be a finite number {self.describe()}, "
                             f"got {value!r}")

    def __repr__(self) -> str:
        return f"<range {self.describe()}>"


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False) -> Range:
    """A finite number in ``[lo, hi]`` (open ends as asked); ``optional`` allows None."""
    return Range(lo, hi, lo_open, hi_open, optional)


#: the largest batch size any recipe key takes (a batch of 65,536 CLIP images is ~40 GB)
MAX_BATCH = 65_536

#: the largest integer a recipe takes anywhere (:func:`clapkit.config.convert`): beyond it
#: no count, size or step is meant, and torch and numpy refuse integers above 2**63 - 1
MAX_INT = 2**53


@attrs.frozen(repr=False)
class Size(Range):
    """An integer count in ``[lo, hi]`` (see :func:`size`); the message gives both ends."""

    def __call__(self, inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None and self.optional:
            return
        if not self.ok(value) or not isinstance(value, int):
            raise ValueError(f"{attr.name} must be an integer from {self.lo} to {self.hi} "
                             f"(its bound), got {value!r}")


def size(hi: int, lo: int = 1, *, optional: bool = False) -> Size:
    """A count or size in ``[lo, hi]``: every option that sets how much is allocated, built
    or written (heads, depth, context tokens, views, batch sizes) names its ceiling, so a
    typo such as ``heads = 1000000`` is refused instead of taking the machine's memory."""
    return Size(lo, hi, optional=optional)


def positive(optional: bool = False) -> Range:
    return Range(0, None, lo_open=True, optional=optional)


def non_negative(optional: bool = False) -> Range:
    return Range(0, None, optional=optional)


_NAME_BAD = re.compile(r"[/\\\x00]")


def is_name(text: str) -> bool:
    """A name, not a path: non-empty, no separators or NUL, not ``.``/``..``, no leading or
    trailing blanks."""
    return bool(text) and text == text.strip() and not _NAME_BAD.search(text) \
        and text not in (".", "..")


def name(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    """A name that becomes part of a file or folder name: never a path."""
    if value is None:
        return
    if not isinstance(value, str) or not is_name(value):
        raise ValueError(f"{attr.name} must be a plain name (no '/', '\\', '..' or blanks "
                         f"around it), got {value!r}")


def inside(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    """A relative path that stays inside the folder it is joined to (no ``..``, not
    absolute): where a component writes inside the run folder."""
    if value is None:
        return
    parts = str(value).replace("\\", "/").split("/") if isinstance(value, str) else []
    if not isinstance(value, str) or not value.strip() or value.startswith(("/", "\\")) \
            or ".." in parts or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"{attr.name} must be a relative path inside the run folder (no "
                         f"'..', not absolute), got {value!r}")


def non_empty(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{attr.name} must be a non-empty string, got {value!r}")


def each(validator: Any, *, min_len: int = 0) -> Any:
    """Apply ``validator`` to every item of a list (and require ``min_len`` items)."""
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        items = list(value.values() if isinstance(value, dict) else value)
        if len(items) < min_len:
            raise ValueError(f"{attr.name} needs at least {min_len} entr"
                             f"{'y' if min_len == 1 else 'ies'}, got {len(items)}")
        for i, v in enumerate(items):
            try:
                validator(inst, attr, v)
            except ValueError as exc:
                key = list(value)[i] if isinstance(value, dict) else i
                raise ValueError(f"{attr.name}[{key!r}]: {exc}") from None
    check.inner = validator  # type: ignore[attr-defined]
    return check


def choice_pattern(pattern: str, allowed: Iterable[str]) -> Any:
    """A string matching ``pattern`` (full match); the message lists ``allowed``."""
    rx = re.compile(pattern)

    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, str) or not rx.fullmatch(value):
            raise ValueError(f"{attr.name} must be one of {', '.join(allowed)}, got {value!r}")
    return check


def increasing(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None and any(b <= a for a, b in zip(value, value[1:])):
        raise ValueError(f"{attr.name} must be strictly increasing, got {list(value)}")


def ranges_of(validator: Any) -> list[Range]:
    """The :class:`Range` objects inside a (possibly composed) attrs validator."""
    if validator is None:
        return []
    if isinstance(validator, Range):
        return [validator]
    op, bound = getattr(validator, "compare_op", None), getattr(validator, "bound", None)
    if op in (">=", ">", "<=", "<") and isinstance(bound, (int, float)):   # attrs.validators.ge...
        if op in (">=", ">"):
            return [Range(lo=bound, lo_open=op == ">")]
        return [Range(hi=bound, hi_open=op == "<")]
    inner = getattr(validator, "inner", None)
    if inner is not None:
        return ranges_of(inner)
    subs = getattr(validator, "_validators", None) or getattr(validator, "validators", None)
    if subs:
        return [r for v in subs for r in ranges_of(v)]
    return []
