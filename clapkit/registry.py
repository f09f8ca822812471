"""Typed registries, one per component kind (DESIGN.md section 2).

A plugin adds entries from its ``clapkit_register`` hook through a :class:`Registrar`, which
stamps every entry with the distribution that provided it. Lookups of unknown names fail with
the known names of that kind and the closest match, in the manner of timm's model registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .errors import DuplicateComponentError, UnknownComponentError

#: The component kinds, in the order a pipeline is assembled; ``demo`` entries are generators
#: of demo data sets (``make(out, seed, tiny)``, see :mod:`clapkit.data.demo`).
KINDS: tuple[str, ...] = (
    "backbone", "prompt", "adapter", "router", "head", "loss", "selector", "dataset", "logger",
    "demo",
)


@attrs.frozen
class NoOptions:
    """Config class for components that take no recipe options."""


@attrs.frozen
class ComponentEntry:
    """One registered component.

    ``factory(config, ctx)`` builds it; ``config`` is an instance of ``config_cls`` made from
    the recipe table; ``ctx`` is a :class:`clapkit.interfaces.BuildContext`.
    ``test_options`` (optional) returns recipe options the contract suites use for a cheap
    instance (for example a tiny model config, or a generated data folder).
    ``meta["offline_options"]`` (optional, a callable ``config -> option overrides``): the
    same component without what would be downloaded (for example random init instead of
    pretrained weights); ``clapkit recipe check`` tries it before the test stand-in.
    """

    kind: str
    name: str
    config_cls: type
    factory: Callable[..., Any]
    summary: str
    provider: str = "unknown"
    version: str = ""
    plugin_name: str = ""
    meta: dict[str, Any] = attrs.field(factory=dict)
    test_options: Callable[..., dict[str, Any]] | None = None


def _first_doc_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry:
    """Components of one kind, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, ComponentEntry] = {}
        #: "name (distribution): error" lines of plugins that failed to load; shown on misses.
        self.broken: list[str] = []

    def add(self, entry: ComponentEntry) -> None:
        old = self._entries.get(entry.name)
        if old is not None:
            raise DuplicateComponentError(
                f"{self.kind} '{entry.name}' is registered twice: by {old.provider} "
                f"(plugin {old.plugin_name}) and by {entry.provider} (plugin {entry.plugin_name})")
        self._entries[entry.name] = entry

    def remove(self, entry: ComponentEntry) -> None:
        """Take ``entry`` out again (a plugin whose registration failed half-way)."""
        if self._entries.get(entry.name) is entry:
            del self._entries[entry.name]

    def get(self, name: str) -> ComponentEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.kind, name, self._entries, self.broken) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[ComponentEntry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)


class Registries:
    """All registries; ``registries.head.get("cosine")`` or ``registries["head"]``."""

    def __init__(self) -> None:
        self._by_kind = {k: Registry(k) for k in KINDS}

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise UnknownComponentError("kind", kind, KINDS) from None

    def __getattr__(self, kind: str) -> Registry:
        if kind.startswith("_"):
            raise AttributeError(kind)
        try:
            return self._by_kind[kind]
        except KeyError:
            raise AttributeError(kind) from None

    def __iter__(self) -> Iterator[Registry]:
        return iter(self._by_kind.values())

    def all_entries(self) -> list[ComponentEntry]:
        return [e for r in self for e in r]


class Registrar:
    """What a plugin's ``clapkit_register`` hook receives: ``registrar.add(...)``.

    It knows which plugin and distribution is calling, so third parties and built-ins are
    recorded the same way. It remembers what it added so the host can :meth:`rollback` a
    plugin whose ``clapkit_register`` raised half-way (registration is all or nothing).
    """

    def __init__(self, registries: Registries, provider: str, version: str,
                 plugin_name: str) -> None:
        self._registries = registries
        self.provider, self.version, self.plugin_name = provider, version, plugin_name
        self.added: list[ComponentEntry] = []

    def rollback(self) -> None:
        """Remove every entry this registrar added."""
        for entry in reversed(self.added):
            self._registries[entry.kind].remove(entry)
        self.added.clear()

    def add(self, kind: str, name: str, factory: Callable[..., Any], *,
            config: type = NoOptions, summary: str | None = None,
            test_options: Callable[..., dict[str, Any]] | None = None,
            **meta: Any) -> None:
        """Register ``factory`` as the ``kind`` component ``name``.

        ``config`` is an attrs class whose fields are the recipe options; ``summary`` defaults
        to the first line of the factory's docstring. Extra keyword arguments are kept as
        ``meta`` (for example ``place="image"`` for adapters).
        """
        if not attrs.has(config):
            raise TypeError(f"{kind} '{name}': config must be an attrs class, got {config!r}")
        entry = ComponentEntry(
            kind=kind, name=name, config_cls=config, factory=factory,
            summary=summary or _first_doc_line(factory) or _first_doc_line(config),
            provider=self.provider, version=self.version, plugin_name=self.plugin_name,
            meta=dict(meta), test_options=test_options)
        self._registries[kind].add(entry)
        self.added.append(entry)
