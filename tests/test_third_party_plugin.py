"""A third-party package registers components exactly as the built-ins do.

The fixture package in tests/fixtures/thirdparty is installed into a temporary folder (its own
dist-info and entry point) and put on PYTHONPATH of subprocesses, so this environment stays
untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "thirdparty"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("thirdparty-site")
    src = tmp_path_factory.mktemp("thirdparty-src") / "pkg"
    shutil.copytree(FIXTURE, src)   # setuptools builds in the source tree: keep the repo clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(src)],
                   check=True, capture_output=True)
    assert list(target.glob("clapkit_thirdparty_demo-*.dist-info"))
    return target


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env.pop("CLAPKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    env.update(extra)
    return env


def _clapkit(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clapkit", *args], capture_output=True,
                          text=True, env=_env(site, **env))


def test_listed_by_clapkit_plugins_with_its_provider(site):
    res = _clapkit(site, "plugins", "--kind", "head", "--hooks")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "thirdparty_dot" in ln)
    assert "clapkit-thirdparty-demo" in line and "0.3.1" in line
    assert "cosine" in res.stdout   # built-ins still there


def test_autoload_switch_hides_third_party_only(site):
    res = _clapkit(site, "plugins", "--kind", "head", CLAPKIT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert res.returncode == 0, res.stderr
    assert "thirdparty_dot" not in res.stdout and "cosine" in res.stdout


def test_usable_from_a_recipe(site, tmp_path):
    recipe = tmp_path / "third.toml"
    recipe.write_text(textwrap.dedent("""
        [data]
        plugin = "imagefolder"
        root = "somewhere"
        [backbone]
        plugin = "open_clip"
        model = "clapkit-tiny"
        [prompts.text]
        plugin = "handcrafted"
        [head]
        plugin = "thirdparty_dot"
        scale = 20.0
        [losses.ce]
        plugin = "cross_entropy"
    """))
    res = _clapkit(site, "recipe", "check", str(recipe))
    assert res.returncode == 0, res.stderr
    bad = _clapkit(site, "recipe", "check", str(recipe), "--set", "head.scale=-1.0")
    assert bad.returncode == 2 and "head" in bad.stderr and "Traceback" not in bad.stderr


def test_contract_suite_passes_good_and_catches_broken(site, tmp_path):
    test_file = tmp_path / "test_thirdparty_contract.py"
    test_file.write_text(textwrap.dedent("""
        from clapkit.testing import HeadContract

        class TestGood(HeadContract):
            components = ["thirdparty_dot"]

        class TestBroken(HeadContract):
            components = ["thirdparty_broken"]
    """))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
                          str(test_file)], capture_output=True, text=True, env=_env(site),
                         cwd=tmp_path)
    out = res.stdout
    assert res.returncode == 1, out[-2000:]
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED")]
    assert failed and all("TestBroken" in ln for ln in failed), out[-2000:]
    assert any("test_logits_shape" in ln for ln in failed)
    assert "passed" in out.splitlines()[-1]
