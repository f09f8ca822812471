"""``clapkit recipe check --strict``: the exit status says whether the recipe runs on this
machine as it is. Plain ``recipe check`` keeps passing with stand-ins (and says so in notes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clapkit import cli as cli_mod

REPO = Path(__file__).resolve().parents[1]
COOP = REPO / "recipes" / "coop.toml"


def _main(args, capsys):
    with pytest.raises(SystemExit) as ex:
        cli_mod.main(args)
    out = capsys.readouterr()
    return ex.value.code, out.out, out.err


def _lacking(tmp_path, *, data: bool, weights: bool) -> list[str]:
    args = ["--set", f'cache.dir="{tmp_path / "cache"}"']
    if data:
        args += ["--set", f'data.root="{tmp_path / "no_such_data"}"',
                 "--set", "data.generate_demo=false"]
    if weights:
        args += ["--set", f'backbone.pretrained="{tmp_path / "no_such_weights.pt"}"']
    return args


@pytest.mark.parametrize("data, weights", [(True, True), (True, False), (False, True)])
def test_strict_fails_with_one_line_per_missing_thing(tmp_path, capsys, data, weights):
    over = _lacking(tmp_path, data=data, weights=weights)
    code, out, err = _main(["recipe", "check", str(COOP), *over], capsys)
    assert code == 0 and ": ok (" in out and "note: " in out     # the default is unchanged

    code, out, err = _main(["recipe", "check", "--strict", str(COOP), *over], capsys)
    assert code == 1
    assert "Traceback" not in out + err and ": ok (" not in out
    missing = [ln for ln in err.splitlines() if ln.startswith("missing: ")]
    assert len(missing) == int(data) + int(weights)
    if data:
        assert any(ln.startswith("missing: data: ") and "no_such_data" in ln for ln in missing)
    if weights:
        assert any(ln.startswith("missing: backbone: ") and "no_such_weights.pt" in ln
                   for ln in missing)
    assert err.splitlines()[-1] == (f"{COOP}: valid, but {len(missing)} thing(s) it needs are "
                                    "not on this machine (--strict)")


def test_strict_passes_when_everything_is_here(tmp_path, capsys):
    data = tmp_path / "demo"
    over = ["--set", f'cache.dir="{tmp_path / "cache"}"', "--set", f'data.root="{data}"']
    code, out, err = _main(["recipe", "check", "--strict", str(COOP), *over], capsys)
    assert code == 0, err
    assert ": ok (" in out and "missing:" not in err
    assert data.is_dir()                 # the recipe generates its demo data: not a stand-in


def test_strict_and_static_contradict(capsys):
    code, _, err = _main(["recipe", "check", "--strict", "--static", str(COOP)], capsys)
    assert code == 2 and "--static and --strict" in err and len(err.strip().splitlines()) == 1
