"""Plugin loading: entry points one by one, broken plugins reported, typo'd hooks rejected."""

from __future__ import annotations

import importlib.metadata as md
import types

import attrs
import pytest

from clapkit import hookimpl
from clapkit.errors import ClapkitError, DuplicateComponentError, UnknownComponentError
from clapkit import plugins as plugins_mod
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
    monkeypatch.setattr(plugins_mod, "_default_host", host)
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


# --- registration is all or nothing; loading errors say where and what to do ---------------

def _half_registering() -> types.SimpleNamespace:
    @hookimpl
    def clapkit_register(registrar):
        registrar.add("head", "half_a", lambda c, x: None, summary="first")
        registrar.add("loss", "half_b", lambda c, x: None, summary="second")
        raise RuntimeError("boom after two entries")
    return types.SimpleNamespace(clapkit_register=clapkit_register)


def test_failed_registration_leaves_no_half_added_entries():
    host = PluginHost()
    assert not host.add_plugin(_half_registering(), "half", "half-dist")
    assert "half_a" not in host.registries.head and "half_b" not in host.registries.loss
    assert "half" not in host.plugins
    b = host.broken[-1]
    assert "boom after two entries" in b.error
    assert b.location and b.location.endswith(f"test_plugin_host.py:"
                                              f"{_half_registering.__code__.co_firstlineno + 5}")
    with pytest.raises(ClapkitError, match=r"failed to register at .*test_plugin_host.py:\d+"):
        host.add_plugin(_half_registering(), "half2", "half-dist", strict=True)
    assert "half_a" not in host.registries.head and "half_b" not in host.registries.loss
    # a later plugin may use the names the failed one tried to take
    host.add_plugin(_registers_same_head(), "ok", "ok-dist")
    assert host.registries.head.get("same").provider == "ok-dist"


def test_duplicate_in_the_middle_rolls_back_the_earlier_entries():
    host = PluginHost()
    host.add_plugin(_registers_same_head(), "p1", "dist-one")

    @hookimpl
    def clapkit_register(registrar):
        registrar.add("loss", "before_dup", lambda c, x: None, summary="s")
        registrar.add("head", "same", lambda c, x: None, summary="s")

    assert not host.add_plugin(types.SimpleNamespace(clapkit_register=clapkit_register), "p2",
                               "dist-two")
    assert "before_dup" not in host.registries.loss


def _write_module(tmp_path, monkeypatch, name: str, text: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return str(path)


GOOD_PLUGIN = (
    "from clapkit import hookimpl\n"
    "@hookimpl\n"
    "def clapkit_register(registrar):\n"
    "    registrar.add('selector', 'twice_sel', lambda c, x: None, summary='ok')\n")


def test_recipe_module_also_installed_by_entry_point_loads_once(tmp_path, monkeypatch):
    _write_module(tmp_path, monkeypatch, "twice_mod_zz", GOOD_PLUGIN)
    monkeypatch.setattr(md, "entry_points", lambda group: [_ep("twice", "twice_mod_zz")])
    host = get_plugin_host(["twice_mod_zz"], autoload_third_party=True)
    assert host.registries.selector.get("twice_sel").plugin_name == "twice"
    host.load_module("twice_mod_zz")                    # again: still nothing happens
    assert not host.broken


def test_recipe_plugin_listed_and_installed_checks_clean(tmp_path, monkeypatch, minimal_recipe,
                                                         fake_host):
    from clapkit.recipe import load_recipe
    _write_module(tmp_path, monkeypatch, "twice_mod_yy", GOOD_PLUGIN.replace("twice_sel",
                                                                             "twice_sel2"))
    import twice_mod_yy
    fake_host.add_plugin(twice_mod_yy, "ep_twice", "some-dist")    # as its entry point does
    recipe = tmp_path / "r.toml"
    recipe.write_text('plugins = ["twice_mod_yy"]\n' + minimal_recipe.read_text())
    load_recipe(recipe, host=fake_host)
    assert fake_host.registries.selector.get("twice_sel2").plugin_name == "ep_twice"


def test_module_not_on_sys_path_says_how_to_fix_it():
    with pytest.raises(ClapkitError) as err:
        PluginHost().load_module("no_such_plugin_mod_zz", source="r.toml: plugins")
    msg = str(err.value)
    assert "r.toml: plugins" in msg and "'no_such_plugin_mod_zz' is not on sys.path" in msg
    assert "PYTHONPATH" in msg and "pip install" in msg


BROKEN_MODULES = {
    "syntax_plugin_zz": ("x = 1\ndef f(:\n    pass\n", 2, "SyntaxError"),
    "name_plugin_zz": ("import attrs\n\nvalue = undefined_name_zz + 1\n", 3, "NameError"),
    "import_plugin_zz": ("import os\nfrom attrs import no_such_thing_zz\n", 2, "ImportError"),
    "dep_plugin_zz": ("import os\nimport missing_dependency_zz\n", 2, "ModuleNotFoundError"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_MODULES))
def test_import_failure_names_file_and_line(name, tmp_path, monkeypatch):
    text, line, kind = BROKEN_MODULES[name]
    path = _write_module(tmp_path, monkeypatch, name, text)
    with pytest.raises(ClapkitError) as err:
        PluginHost().load_module(name)
    assert f"{path}:{line}" in str(err.value) and kind in str(err.value)
    monkeypatch.setattr(md, "entry_points", lambda group: [_ep("ep_" + name, name)])
    host = PluginHost()
    host.load_entry_points(autoload_third_party=True)
    b = host.broken[0]
    assert b.location == f"{path}:{line}" and kind in b.error and "Traceback" in b.traceback


def test_clapkit_plugins_lists_failed_plugins_with_location(tmp_path, monkeypatch, capsys):
    from clapkit import cli as cli_mod
    path = _write_module(tmp_path, monkeypatch, "listed_bad_zz", "def f(:\n")
    monkeypatch.setattr(md, "entry_points", lambda group: [_ep("listed_bad", "listed_bad_zz")])
    host = PluginHost()
    host.load_entry_points(autoload_third_party=True)
    monkeypatch.setattr(plugins_mod, "_default_host", host)
    for args, tb in ((["plugins"], False), (["--debug", "plugins"], True)):
        with pytest.raises(SystemExit):
            cli_mod.main(args)
        out = capsys.readouterr().out
        assert "1 plugin(s) failed to load" in out
        assert f"listed_bad (" in out and f"{path}:1" in out and "SyntaxError" in out
        assert ("Traceback" in out) is tb


def test_recipe_plugin_import_error_is_one_line_and_debug_shows_the_cause(
        tmp_path, monkeypatch, minimal_recipe, fake_host, capsys):
    from clapkit import cli as cli_mod
    path = _write_module(tmp_path, monkeypatch, "recipe_bad_zz", "x = 1\nraise_here(\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text('plugins = ["recipe_bad_zz"]\n' + minimal_recipe.read_text())
    monkeypatch.setattr(plugins_mod, "_default_host", fake_host)
    with pytest.raises(SystemExit) as ex:
        cli_mod.main(["recipe", "check", str(recipe)])     # plugins load before any build
    err = capsys.readouterr().err
    assert ex.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "r.toml" in err and f"{path}:2" in err and "SyntaxError" in err
    with pytest.raises(ClapkitError) as exc:
        cli_mod.main(["--debug", "recipe", "check", str(recipe)])
    assert isinstance(exc.value.__cause__, SyntaxError)
