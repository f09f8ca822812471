"""Event hooks of a run and the recipe's loggers as hook listeners."""

from __future__ import annotations

from typing import Any

from ..build import build_component
from ..interfaces import BuildContext
from ..plugins import PluginHost
from .state import RunState

DEFAULT_LOGGER = "console"


class Events:
    """Fires ``clapkit_*`` event hooks with the run state; owns the loggers it attached.

    Loggers (``[log.NAME]`` components) listen on rank 0 only; without a ``[log]`` section
    the registered ``console`` logger (if any plugin provides one) is the one default. A
    logger registered with the ``always_on`` meta (the run's metrics file) is attached with
    its default options to every run whose recipe does not list it.
    Hooks fire on every rank, so user callbacks can act per rank (``run.rank``).
    """

    def __init__(self, host: PluginHost, run: RunState) -> None:
        self.host, self.run = host, run
        self.listeners: list[Any] = []

    def attach_loggers(self, recipe: Any, ctx: BuildContext) -> None:
        if not self.run.is_main:
            return
        if recipe.log:
            built = [(f"log.{n}", build_component(s, ctx)) for n, s in recipe.log.items()]
        elif DEFAULT_LOGGER in self.host.registries["logger"]:
            entry = self.host.registries["logger"].get(DEFAULT_LOGGER)
            built = [("log.console", entry.factory(entry.config_cls(), ctx))]
        else:
            built = []
        listed = {s.plugin for s in recipe.log.values()}
        for entry in self.host.registries["logger"]:
            if entry.meta.get("always_on") and entry.name not in listed:
                built.append((f"log.{entry.name}", entry.factory(entry.config_cls(), ctx)))
        for name, obj in built:
            self.host.register_listener(obj, name=f"{name}@{id(self)}")
            self.listeners.append(obj)

    def detach(self) -> None:
        for obj in self.listeners:
            self.host.unregister_listener(obj)
            close = getattr(obj, "close", None)
            if callable(close):
                close()
        self.listeners.clear()

    def fire(self, name: str, **kwargs: Any) -> None:
        getattr(self.host.hook, name)(run=self.run, **kwargs)
