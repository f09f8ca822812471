"""Plugin loading: entry points one by one, broken plugins reported, typo'd hooks rejected."""

from __future__ import annotations

import importlib.metadata as md
import types

import attrs
import pytest

from clapkit import hookimpl
from clapkit.errors import ClapkitError, DuplicateComponentError, UnknownComponentError
from clapkit.plugins import PluginHost, get_plugin_host
from clapkit.registry import KINDS


def _ep(name: str, value: str) -> md.EntryPoint:
    return md.EntryPoint(name=name, value=value, group="clapkit")


def test_builtins_cover_every_kind_with_provider():
    host = get_plugin_host()
    assert not host.broken, [b.describe() for b in host.broken]
    for kind in KINDS:
        entries = list(host.registries[kind])
        assert entries, f"no built-in component of kind {kind}"
        assert all(e.provider == "clapkit" and e.summary for e in entries)


def test_broken_entry_point_is_reported_and_others_still_load(monkeypatch, tmp_path):
    (tmp_path / "good_ep_mod.py").write_text(
        "from clapkit import hookimpl\nfrom clapkit.registry import NoOptions\n"
        "@hookimpl\ndef clapkit_register(registrar):\n"
        "    registrar.add('selector', 'good_sel', lambda c, x: None, summary='ok')\n")
    (tmp_path / "bad_ep_mod.py").write_text("import this_module_does_not_exist_zz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(md, "entry_points", lambda group: [_ep("bad", "bad_ep_mod"),
                                                           _ep("good", "good_ep_mod")])
    host = PluginHost()
    host.load_entry_points(autoload_third_party=True)
    assert "good_sel" in host.registries.selector
    assert [b.name for b in host.broken] == ["bad"]
    assert "this_module_does_not_exist_zz" in host.broken[0].error
    with pytest.raises(UnknownComponentError) as err:
        host.registries.selector.get("missing_sel")
    assert "bad" in str(err.value) and "good_sel" in str(err.value)


def test_misspelled_hook_is_an_error_at_load_time():
    def clapkit_regster(registrar):  # the typo under test
        pass

    plugin = types.SimpleNamespace(clapkit_regster=hookimpl(clapkit_regster))
    host = PluginHost()
    with pytest.raises(ClapkitError, match="did you mean 'clapkit_register'"):
        host.add_plugin(plugin, "typo", "typo-dist", strict=True)
    assert not host.add_plugin(plugin, "typo", "typo-dist")
    assert host.broken and "clapkit_regster" in host.broken[0].error


def test_unmarked_misspelled_hook_is_caught_too():
    plugin = types.SimpleNamespace(clapkit_epoch_ends=lambda run, task, stage, epoch, metrics: 0)
    assert not PluginHost().add_plugin(plugin, "typo2", "x")


def _registers_same_head() -> types.SimpleNamespace:
    @hookimpl
    def clapkit_register(registrar):
        registrar.add("head", "same", lambda c, x: None, summary="s")
    return types.SimpleNamespace(clapkit_register=clapkit_register)


def test_duplicate_names_name_both_providers():
    host = PluginHost()
    host.add_plugin(_registers_same_head(), "p1", "dist-one")
    with pytest.raises(DuplicateComponentError, match="dist-one.*dist-two"):
        host.add_plugin(_registers_same_head(), "p2", "dist-two", strict=True)
    # loaded from an entry point, the duplicate is reported and the first provider kept
    assert not host.add_plugin(_registers_same_head(), "p3", "dist-three")
    assert "dist-one" in host.broken[-1].error and "dist-three" in host.broken[-1].error
    assert host.registries.head.get("same").provider == "dist-one"


def test_unknown_name_lists_known_and_closest():
    host = get_plugin_host()
    with pytest.raises(UnknownComponentError) as err:
        host.registries.head.get("cosin")
    assert "did you mean 'cosine'" in str(err.value) and "known head names" in str(err.value)


def test_config_must_be_attrs():
    @hookimpl
    def clapkit_register(registrar):
        registrar.add("head", "x", lambda c, x: None, config=dict)

    with pytest.raises(ClapkitError, match="attrs class"):
        PluginHost().add_plugin(types.SimpleNamespace(clapkit_register=clapkit_register),
                                "p", "d", strict=True)


def test_plugins_can_add_cli_commands(monkeypatch):
    import click
    from click.testing import CliRunner

    from clapkit import cli as cli_mod

    @click.command("hello-plugin")
    def hello():
        click.echo("hello from a plugin")

    @hookimpl
    def clapkit_add_commands(cli):
        cli.add_command(hello)

    host = get_plugin_host()
    host.add_plugin(types.SimpleNamespace(clapkit_add_commands=clapkit_add_commands), "cmd", "d")
    monkeypatch.setattr(cli_mod, "_host", host)
    monkeypatch.setattr(cli_mod, "_extended", False)
    group = cli_mod.get_cli()
    try:
        res = CliRunner().invoke(group, ["hello-plugin"])
        assert res.exit_code == 0 and "hello from a plugin" in res.output
    finally:
        group.commands.pop("hello-plugin", None)


@attrs.frozen
class _Cfg:
    a: int = 1
