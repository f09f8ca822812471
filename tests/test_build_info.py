"""The resolved recipe of a run names the clapkit version and the git commit."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from clapkit import __version__
from clapkit.build_info import build_info, git_commit, recipe_header


def test_version_and_commit_in_a_checkout():
    info = build_info()
    assert info["clapkit_version"] == __version__
    repo = Path(__file__).resolve().parents[1]

    def head() -> str | None:
        res = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                             capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else None

    before = head()
    if before is not None:
        git_commit.cache_clear()           # cached per process; HEAD may have moved since
        got = git_commit().split("+")[0]
        assert got in (before, head())     # (a commit may land in between)


def test_header_is_toml_comments():
    text = recipe_header() + '[run]\nname = "x"\n'
    assert tomllib.loads(text) == {"run": {"name": "x"}}
    assert f"clapkit_version = {__version__}" in text
