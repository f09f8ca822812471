"""Shared fixtures: a plugin host with small stand-in components for core tests."""

from __future__ import annotations

import types
from typing import Literal

import attrs
import pytest

from clapkit import hookimpl
from clapkit.plugins import PluginHost


@attrs.frozen
class FakeConfig:
    size: int = attrs.field(default=4, validator=attrs.validators.gt(0))
    mode: Literal["a", "b"] = "a"
    scale: float = 1.0
    tags: list[str] = attrs.field(factory=list)


def _factory(cfg, ctx):
    """A stand-in component for recipe tests."""
    return cfg


def _fake_plugin() -> types.SimpleNamespace:
    @hookimpl
    def clapkit_register(registrar):
        for kind, name in [("dataset", "fake_data"), ("backbone", "fake_bb"),
                           ("prompt", "fake_prompt"), ("prompt", "fake_prompt2"),
                           ("adapter", "fake_adapter"), ("router", "fake_router"),
                           ("head", "fake_head"), ("loss", "fake_loss"),
                           ("selector", "fake_selector"), ("logger", "fake_logger")]:
            registrar.add(kind, name, _factory, config=FakeConfig)
    return types.SimpleNamespace(clapkit_register=clapkit_register)


@pytest.fixture
def fake_host() -> PluginHost:
    """A host with only the stand-in components (no entry points loaded)."""
    host = PluginHost()
    host.add_plugin(_fake_plugin(), "fakes", "fake-dist", "9.9")
    return host


MINIMAL_RECIPE = """
[run]
name = "t"
seed = 3

[data]
plugin = "fake_data"
batch_size = 8
size = 2

[backbone]
plugin = "fake_bb"

[prompts.desc]
plugin = "fake_prompt"
tags = ["x", "y"]

[prompts.soft]
plugin = "fake_prompt2"
mode = "b"

[adapters.face]
plugin = "fake_adapter"
streams = ["face"]

[head]
plugin = "fake_head"
view = "soft"

[losses.ce]
plugin = "fake_loss"

[losses.mi]
plugin = "fake_loss"
weight = 0.5
warmup = 1
ramp = 2

[[stages]]
name = "one"
train = ["prompts.*"]
epochs = 2
lr = 0.01
"""


@pytest.fixture
def minimal_recipe(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text(MINIMAL_RECIPE)
    return path
