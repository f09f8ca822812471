"""Shared fixtures: a plugin host with small stand-in components for core tests."""

from __future__ import annotations

import os

# One intra-op thread for the tests and the subprocesses they start (CLI runs, DDP workers):
# the tensors here are tiny, so a second OpenMP thread only adds synchronisation, and on a
# loaded 2-core machine it oversubscribes (measured ~4x slower in tests/components with 2).
# setdefault: an explicit OMP_NUM_THREADS in the environment still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import pytest  # noqa: E402
import torch  # noqa: E402
from fake_components import fake_plugin  # noqa: E402

from clapkit.plugins import PluginHost  # noqa: E402

if os.environ["OMP_NUM_THREADS"].isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def _cwd_outside_the_checkout(tmp_path_factory):
    """Run every test from a temporary folder: what resolves against the working directory
    (``cache.dir = ".clapkit_cache"``, generated demo data under ``.clapkit_demo/``,
    ``runs/``) lands there, not in the checkout, so the suite leaves ``git status`` as it
    found it. Tests name repository files by absolute path (``Path(__file__)``)."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


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
