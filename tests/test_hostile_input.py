"""Hostile and broken input (issue 18): each case is refused with one line naming the file or
key (exit 2, no traceback), writes nothing outside the run folder and imports nothing from a
run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clapkit.cli import main


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m clapkit ARGS`` in ``cwd`` (which ``-m`` puts first on ``sys.path``)."""
    return subprocess.run([sys.executable, "-m", "clapkit", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The ``clapkit`` console script next to this interpreter."""
    exe = Path(sys.executable).with_name("clapkit")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _main_exit(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``clapkit ARGS`` run in this process."""
    with pytest.raises(SystemExit) as code:
        main(args)
    return code.value.code, capsys.readouterr().err


# --- case 1: a run folder's recipe.toml is not trusted as code ------------------------------

def _booby_trapped_run(folder: Path) -> Path:
    """A downloaded 'run folder' whose recipe lists a plugin module shipped beside it; the
    module writes PWNED into the folder when imported."""
    folder.mkdir()
    (folder / "recipe.toml").write_text('plugins = ["evil"]\n[run]\nname = "x"\n')
    (folder / "evil.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('PWNED').write_text('ran')\n")
    return folder


@pytest.mark.parametrize("runner", [_cli, _script], ids=["python -m clapkit", "console script"])
def test_eval_inside_a_run_folder_does_not_import_its_code(tmp_path, runner):
    run = _booby_trapped_run(tmp_path / "run")
    res = runner("eval", ".", cwd=run)
    assert res.returncode == 2, res.stderr
    assert not (run / "PWNED").exists()
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "evil" in err and "--trust-run-code" in err
    assert "PYTHONPATH" not in err            # no advice that would run the shipped code


def test_predict_and_eval_from_elsewhere_refuse_the_shipped_module(tmp_path, capsys):
    run = _booby_trapped_run(tmp_path / "run")
    (tmp_path / "img.png").write_bytes(b"")
    rc, err = _main_exit(["predict", str(run), str(tmp_path / "img.png")], capsys)
    assert rc == 2 and "would be imported from the run folder" in err
    rc, err = _main_exit(["eval", str(run)], capsys)
    assert rc == 2 and "PYTHONPATH" not in err
    assert not (run / "PWNED").exists() and "evil" not in sys.modules


def test_trust_run_code_is_the_explicit_opt_in(tmp_path):
    run = _booby_trapped_run(tmp_path / "run")
    res = _script("eval", "--trust-run-code", ".", cwd=run)
    assert (run / "PWNED").read_text() == "ran"       # imported, as asked
    assert res.returncode == 2 and "[data] is missing" in res.stderr   # then the recipe


# --- case 2: every size option has a bound ----------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
STAGED = REPO / "recipes" / "demo_caer_staged.toml"     # has [adapters.temporal]


@pytest.mark.parametrize("override,bound", [
    ("adapters.temporal.heads=1000000", "from 1 to 128"),
    ("adapters.temporal.depth=100000000000000000000000000000", "at most 2**53"),
    ("adapters.temporal.depth=1000", "from 1 to 48"),
    ("adapters.temporal.depth=1e29", "expected an integer"),
    ("adapters.temporal.dim_head=100000000", "from 1 to 512"),
    ("cache.views=1000000000", "from 1 to 1000"),
    ("probe.grid=100000000", "from 2 to 1000"),
    ("data.batch_size=9223372036854775808", "at most 2**53"),     # above sys.maxsize
    ("data.batch_size=100000000", "from 1 to 65536"),
    ("memory.size=100000000000", "from 0 to 10000000"),
])
@pytest.mark.parametrize("static", [True, False], ids=["static", "built"])
def test_recipe_check_refuses_sizes_past_their_bound(override, bound, static, capsys):
    """Refused while reading the recipe, before anything is built or allocated."""
    args = ["recipe", "check", str(STAGED), "--set", override] + (["--static"] if static else [])
    rc, err = _main_exit(args, capsys)
    key = override.split("=")[0]
    assert rc == 2 and bound in err and f"--set {key}" in err, err
    assert len(err.strip().splitlines()) == 1


def test_attention_width_of_the_temporal_adapter_is_bounded(capsys):
    rc, err = _main_exit(["recipe", "check", "--static", str(STAGED), "--set",
                          "adapters.temporal.heads=128", "--set",
                          "adapters.temporal.dim_head=512"], capsys)
    assert rc == 2 and "heads x dim_head must be at most 8192" in err


@pytest.mark.parametrize("override,bound", [
    ("prompts.soft.n_ctx=100000000", "from 1 to 75"),
])
def test_prompt_context_length_is_bounded(tmp_path, override, bound, capsys):
    recipe = tmp_path / "coop.toml"
    recipe.write_text(f'extends = "{REPO / "recipes" / "demo_caer_staged.toml"}"\n'
                      '[prompts.soft]\nplugin = "coop"\n')
    rc, err = _main_exit(["recipe", "check", "--static", str(recipe), "--set", override],
                         capsys)
    assert rc == 2 and bound in err, err


#: size options of plugins whose files another engineer owns at the time of writing (issue
#: 18): still unbounded; the test fails when one gains a bound, so the list only shrinks
NOT_YET_BOUNDED = {
    "adapter:vga.layers", "adapter:vga.heads", "adapter:vga.ff_dim",
    "adapter:variational.global_samples", "loss:caption_lm.layers", "loss:caption_lm.heads",
    "loss:caption_lm.vocab_size", "loss:itc.queue_size", "loss:itm.layers", "loss:itm.heads",
    "logger:image_text.caption_images", "logger:image_text.batch_size",
}
SIZE_NAME = ("heads", "depth", "layers", "n_ctx", "size", "views", "grid", "batch", "queue",
             "dim", "frames", "samples", "length", "bank", "reduction", "top_k", "images",
             "max_iter", "vocab", "ratio")


def _unbounded_size_options() -> set[str]:
    """``kind:name.field`` of every integer option named like a size without an upper bound,
    over the core sections and every registered component."""
    import typing

    import attrs

    from clapkit import recipe as R
    from clapkit.plugins import get_plugin_host
    from clapkit.validators import ranges_of

    found: set[str] = set()

    def walk(cls: type, where: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in attrs.fields(cls):
            tp = hints.get(f.name)
            if isinstance(tp, type) and attrs.has(tp):
                walk(tp, f"{where}.{f.name}")
                continue
            if "int" not in str(tp) or not any(s in f.name for s in SIZE_NAME):
                continue
            if not any(r.hi is not None for r in ranges_of(f.validator)) \
                    and not isinstance(f.validator, attrs.validators.in_(()).__class__):
                found.add(f"{where}.{f.name}")

    for e in get_plugin_host().registries.all_entries():
        if attrs.has(e.config_cls):
            walk(e.config_cls, f"{e.kind}:{e.name}")
    for key, cls in R.PLAIN_SECTIONS.items():
        walk(cls, key)
    return found


def test_every_size_option_has_an_upper_bound():
    assert _unbounded_size_options() == NOT_YET_BOUNDED


# --- case 3: no tracebacks -------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "x = " + "[" * 5000 + "]" * 5000,                       # the parser's RecursionError
    "x = " + "[" * 40 + "]" * 40,                           # parses, but deeper than any key
    "x = " + "{a = " * 3000 + "1" + "}" * 3000,
    "[" + ".".join(["a"] * 3000) + "]\nb = 1",
], ids=["arrays-5000", "arrays-40", "inline-tables-3000", "dotted-table-3000"])
def test_deeply_nested_recipe_is_one_line(tmp_path, body, capsys):
    f = tmp_path / "deep.toml"
    f.write_text(f'[run]\nname = "x"\n{body}\n')
    rc, err = _main_exit(["recipe", "check", "--static", str(f)], capsys)
    assert rc == 2 and f"{f}: arrays or tables nest deeper than 32 levels" in err
    assert len(err.strip().splitlines()) == 1


def test_deeply_nested_override_is_one_line(capsys):
    rc, err = _main_exit(["recipe", "check", "--static", str(STAGED), "--set",
                          "run.x=" + "[" * 3000 + "]" * 3000], capsys)
    assert rc == 2 and "--set run.x: arrays or tables nest deeper" in err
    rc, err = _main_exit(["recipe", "check", "--static", str(STAGED), "--set",
                          ".".join(["a"] * 3000) + "=1"], capsys)
    assert rc == 2 and "more than 32 dotted parts" in err
