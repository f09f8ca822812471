"""Turning recipe tables into attrs config objects, and back.

``structure(cls, table, file=..., key=...)`` checks every key against the attrs fields (unknown
keys are errors with a did-you-mean), converts TOML values to the annotated types (int -> float,
list -> tuple), checks ``Literal`` choices, recurses into nested attrs classes and reports
attrs validator failures with the file and dotted key. ``unstructure(obj)`` gives the TOML
table back (``None`` fields are left out, since TOML has no null).
"""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from .errors import RecipeError
from .validators import MAX_INT


def field_names(cls: type) -> list[str]:
    return [f.name for f in attrs.fields(cls)]


FileOf = Union[str, None, Callable[[str], str]]


def _at(file: FileOf, key: str) -> str | None:
    """The file that set ``key``: ``file`` may map dotted keys to files (recipe provenance)."""
    return file(key) if callable(file) else file


def structure(cls: type, table: dict[str, Any], *, file: FileOf, key: str) -> Any:
    """Build ``cls`` from ``table``; every failure is a :class:`RecipeError` at ``file: key``.

    ``file`` is a file name or a callable giving the file that set a dotted key.
    """
    if not isinstance(table, dict):
        raise RecipeError(_at(file, key), key, f"expected a table, got {_tname(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        sub = f"{key}.{name}" if key else name
        if name not in fields:
            raise RecipeError(_at(file, sub), sub, "unknown key", allowed=fields, got=name)
        kwargs[name] = convert(hints.get(name, Any), value, file=file, key=sub,
                               finite=not fields[name].metadata.get("allow_nonfinite", False))
    missing = [n for n, f in fields.items()
               if f.default is attrs.NOTHING and n not in kwargs and f.init]
    if missing:
        raise RecipeError(_at(file, key), f"{key}.{missing[0]}" if key else missing[0],
                          "required key is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        bad = _culprit(cls, kwargs)
        sub = f"{key}.{bad}" if key and bad else (bad or key)
        raise RecipeError(_at(file, sub), sub, f"invalid value: {exc}") from None


def _culprit(cls: type, kwargs: dict[str, Any]) -> str | None:
    """The one optional key whose removal makes ``cls(**kwargs)`` valid (so a validator
    failure is reported where that key was set, e.g. on the command line), else None."""
    found = []
    for name in kwargs:
        try:
            cls(**{k: v for k, v in kwargs.items() if k != name})
        except (TypeError, ValueError):
            continue
        found.append(name)
    return found[0] if len(found) == 1 else None


def convert(tp: Any, value: Any, *, file: FileOf, key: str, finite: bool = True) -> Any:
    """Convert one TOML value to type ``tp`` or raise a RecipeError naming ``key``.

    Floats must be finite (``nan``/``inf`` are valid TOML but never a meant learning rate or
    weight) unless ``finite`` is false: a field opts out with
    ``attrs.field(metadata={"allow_nonfinite": True})``.
    """
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise RecipeError(_at(file, key), key, f"invalid value {value!r}",
                              allowed=[str(c) for c in choices], got=str(value))
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, file=file, key=key, finite=finite)
            except RecipeError as exc:
                errors.append(exc.problem)
        raise RecipeError(_at(file, key), key, "; ".join(errors) or f"invalid value {value!r}")
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(_at(file, key), key, f"expected a list, got {_tname(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise RecipeError(_at(file, key), key, f"expected {len(args)} values, got {len(value)}")
        item_t = args[0] if args else Any
        items = [convert(args[i] if origin is tuple and args and args[-1] is not Ellipsis
                         else item_t, v, file=file, key=f"{key}[{i}]", finite=finite)
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(_at(file, key), key, f"expected a table, got {_tname(value)}")
        kt, vt = (get_args(tp) + (Any, Any))[:2]
        return {k: convert(vt, v, file=file, key=f"{key}.{k}", finite=finite)
                for k, v in value.items()}
    if isinstance(tp, type) and attrs.has(tp):
        return structure(tp, value, file=file, key=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(_at(file, key), key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(_at(file, key), key, f"expected an integer, got {value!r}")
        if abs(value) > MAX_INT:
            raise RecipeError(_at(file, key), key, f"integer {value} is out of range "
                              f"(at most 2**53 = {MAX_INT} in magnitude)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(_at(file, key), key, f"expected a number, got {value!r}")
        if finite and not math.isfinite(value):
            raise RecipeError(_at(file, key), key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(_at(file, key), key, f"expected a string, got {value!r}")
        return value
    return value


def unstructure(obj: Any) -> Any:
    """The TOML-ready form of an attrs object (None values dropped, tuples as lists)."""
    if attrs.has(type(obj)):
        out = {}
        for f in attrs.fields(type(obj)):
            v = getattr(obj, f.name)
            if v is None or not f.init:
                continue
            out[f.name] = unstructure(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items() if v is not None}
    return obj


def _tname(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
