"""Stand-in components for core tests (a module of its own: conftest module names clash,
and attrs type hints resolve through the defining module)."""

from __future__ import annotations

import types
from typing import Literal

import attrs

from clapkit import hookimpl


@attrs.frozen
class FakeConfig:
    size: int = attrs.field(default=4, validator=attrs.validators.gt(0))
    mode: Literal["a", "b"] = "a"
    scale: float = 1.0
    tags: list[str] = attrs.field(factory=list)


def _factory(cfg, ctx):
    """A stand-in component for recipe tests."""
    return cfg


def fake_plugin() -> types.SimpleNamespace:
    @hookimpl
    def clapkit_register(registrar):
        for kind, name in [("dataset", "fake_data"), ("backbone", "fake_bb"),
                           ("prompt", "fake_prompt"), ("prompt", "fake_prompt2"),
                           ("adapter", "fake_adapter"), ("router", "fake_router"),
                           ("head", "fake_head"), ("loss", "fake_loss"),
                           ("selector", "fake_selector"), ("logger", "fake_logger"),
                           ("demo", "fake_demo")]:
            registrar.add(kind, name, _factory, config=FakeConfig)
    return types.SimpleNamespace(clapkit_register=clapkit_register)


