"""Shape checks at component boundaries: a wrong output fails where it is produced.

The pipeline calls :func:`check_shape` on what each component returns, so a plugin that
returns ``[B,T,D]`` where ``[B,D]`` is due fails with the plugin name, the recipe section,
the expected and the actual shape, instead of a traceback deep inside a loss. Expected
shapes are tuples of sizes; ``None`` accepts any size in that place. A size may be given as
``(name, value)`` so the message says which dimension it is (``B=4``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch

from .errors import ClapkitError

Dim = Union[int, None, tuple[str, int], tuple[str, None]]


class ComponentShapeError(ClapkitError):
    """A component returned a tensor of the wrong shape (names it, its section, both shapes)."""


def _fmt_dim(d: Dim) -> str:
    if isinstance(d, tuple):
        name, size = d
        return name if size is None else f"{name}={size}"
    return "*" if d is None else str(d)


def _size(d: Dim) -> int | None:
    return d[1] if isinstance(d, tuple) else d


def describe(expected: Sequence[Dim]) -> str:
    return "[" + ", ".join(_fmt_dim(d) for d in expected) + "]"


def matches(shape: Sequence[int], expected: Sequence[Dim]) -> bool:
    if len(shape) != len(expected):
        return False
    return all(_size(e) is None or int(s) == _size(e) for s, e in zip(shape, expected))


def check_shape(value: Any, expected: Sequence[Dim] | Sequence[Sequence[Dim]], *,
                section: str, plugin: str, what: str) -> Any:
    """``value`` unchanged when it is a tensor of one of the ``expected`` shapes (a list of
    alternatives is allowed: ``[[C, D], [B, C, D]]``), else :class:`ComponentShapeError`.

    ``section``: the recipe section (``adapters.temporal``); ``plugin``: its plugin name;
    ``what``: which output (``"video adapter output for stream 'face'"``).
    """
    options: list[Sequence[Dim]] = (list(expected)  # type: ignore[arg-type]
                                    if expected and isinstance(expected[0], (list, tuple))
                                    and not (len(expected[0]) == 2
                                             and isinstance(expected[0][0], str))
                                    else [expected])  # type: ignore[list-item]
    if not isinstance(value, torch.Tensor):
        raise ComponentShapeError(
            f"[{section}] {plugin}: {what} is a {type(value).__name__}, expected a tensor of "
            f"shape {' or '.join(describe(o) for o in options)}")
    if any(matches(value.shape, o) for o in options):
        return value
    raise ComponentShapeError(
        f"[{section}] {plugin}: {what} has shape {list(value.shape)}, expected "
        f"{' or '.join(describe(o) for o in options)}")
