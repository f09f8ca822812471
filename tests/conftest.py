"""Shared fixtures: a plugin host with small stand-in components for core tests."""

from __future__ import annotations

import pytest
from fake_components import fake_plugin

from clapkit.plugins import PluginHost


@pytest.fixture
def fake_host() -> PluginHost:
    """A host with only the stand-in components (no entry points loaded)."""
    host = PluginHost()
    host.add_plugin(fake_plugin(), "fakes", "fake-dist", "9.9")
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
