"""The command line: listing, recipe check/show, exit status 2 with one readable line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from clapkit import cli as cli_mod
from clapkit import plugins as plugins_mod
from clapkit.registry import KINDS


@pytest.fixture
def use_fake_host(monkeypatch, fake_host):
    monkeypatch.setattr(plugins_mod, "_default_host", fake_host)
    return fake_host


def _main(args, capsys):
    with pytest.raises(SystemExit) as ex:
        cli_mod.main(args)
    out = capsys.readouterr()
    return ex.value.code, out.out, out.err


def test_version(capsys):
    code, out, _ = _main(["--version"], capsys)
    assert code == 0 and out.startswith("clapkit, version ")


def test_plugins_lists_every_kind_with_provider(use_fake_host, capsys):
    code, out, _ = _main(["plugins"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["kind", "name", "provider", "version"]
    for kind in KINDS:
        assert any(ln.split()[0] == kind and "fake-dist" in ln for ln in lines[1:]), kind


def test_plugins_kind_filter_and_hooks(use_fake_host, capsys):
    code, out, _ = _main(["plugins", "--kind", "head", "--hooks"], capsys)
    assert code == 0 and "fake_head" in out and "fake_bb" not in out
    assert "fakes" in out and "clapkit_register" in out


def test_recipe_check_ok_and_typo(use_fake_host, minimal_recipe, tmp_path, capsys):
    code, out, _ = _main(["recipe", "check", "--static", str(minimal_recipe)], capsys)
    assert code == 0 and "ok" in out
    bad = tmp_path / "typo.toml"
    bad.write_text(minimal_recipe.read_text().replace('plugin = "fake_bb"', 'plugn = "fake_bb"'))
    code, out, err = _main(["recipe", "check", str(bad)], capsys)
    assert code == 2
    assert "typo.toml" in err and "backbone.plugn" in err and "did you mean 'plugin'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(use_fake_host, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nseed = 'x'\n")
    with pytest.raises(Exception, match="expected an integer"):
        cli_mod.main(["--debug", "recipe", "check", str(bad)])


def test_recipe_show_round_trips(use_fake_host, minimal_recipe, tmp_path, capsys):
    code, out, _ = _main(["recipe", "show", str(minimal_recipe), "--set", "run.seed=42"], capsys)
    assert code == 0 and "seed = 42" in out
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    code2, out2, _ = _main(["recipe", "show", str(shown)], capsys)
    assert code2 == 0 and out2 == out


def test_missing_file_is_exit_2(use_fake_host, capsys):
    code, _, err = _main(["recipe", "check", "no/such/recipe.toml"], capsys)
    assert code == 2 and "no/such/recipe.toml" in err


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "clapkit", "--help"], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "plugins" in res.stdout and "recipe" in res.stdout
