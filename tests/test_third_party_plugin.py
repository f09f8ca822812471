"""A third-party package registers components exactly as the built-ins do.

The fixture package in tests/fixtures/thirdparty is installed into a temporary folder (its own
dist-info and entry point) and put on PYTHONPATH of subprocesses, so this environment stays
untouched.
"""

from __future__ import annotations

import os
import re
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
    assert any("test_output_follows_the_contract" in ln for ln in failed)
    assert "head 'thirdparty_broken': logits has shape (4,), expected (4, 5)" in out
    assert "passed" in out.splitlines()[-1]


# --- pytest --clapkit-plugin: uninstalled modules, the README example, one host -------------

README = Path(__file__).parents[1] / "README.md"


def readme_blocks() -> dict[str, str]:
    """The python code blocks of README's "Writing a plugin" section, by their first-line
    file comment (``# my_lab/components.py``)."""
    text = README.read_text()
    section = text[text.index("## Writing a plugin"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return {b.splitlines()[0].lstrip("# ").strip(): b for b in blocks}


BROKEN_HEADS = textwrap.dedent("""
    import attrs, torch
    from clapkit import hookimpl
    from clapkit.interfaces import Head, HeadOutput

    @attrs.frozen
    class Cfg:
        scale: float = 1.0

    class SumHead(Head):
        \"\"\"One score per image instead of per class.\"\"\"
        def forward(self, z, text, views=None):
            return HeadOutput(z.sum(-1))

    @hookimpl
    def clapkit_register(registrar):
        registrar.add("head", "sum_head", lambda cfg, ctx: SumHead(), config=Cfg,
                      summary="broken on purpose")
""")

SESSION_TEST = textwrap.dedent("""
    from clapkit.testing import HeadContract

    class TestBroken(HeadContract):
        components = ["sum_head"]

    def test_one_host_serves_the_session(request, clapkit_host, contract_ctx):
        assert clapkit_host is request.config._clapkit_host
        assert contract_ctx.host is clapkit_host
        assert {"dot", "sum_head"} <= set(clapkit_host.registries.head.names())
""")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """One pytest session over README's plugin and test, plus a broken head, loaded with
    --clapkit-plugin from a folder that is only on PYTHONPATH."""
    root = tmp_path_factory.mktemp("readme-plugin")
    blocks = readme_blocks()
    (root / "my_lab").mkdir()
    (root / "my_lab" / "__init__.py").write_text("")
    (root / "my_lab" / "components.py").write_text(blocks["my_lab/components.py"])
    (root / "test_contract.py").write_text(blocks["tests/test_contract.py"])
    (root / "broken_heads_zz.py").write_text(BROKEN_HEADS)
    (root / "test_session.py").write_text(SESSION_TEST)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH",
                                                                                 "")]))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                          "--clapkit-plugin", "my_lab.components", "--clapkit-plugin",
                          "broken_heads_zz", "test_contract.py", "test_session.py"],
                         capture_output=True, text=True, env=env, cwd=root)
    return res.stdout + res.stderr


def _outcomes(out: str, prefix: str) -> dict[str, str]:
    lines = [ln.split(" ", 1) for ln in out.splitlines() if ln.startswith(("PASSED", "FAILED"))]
    return {rest.split(" - ")[0]: status for status, rest in lines if prefix in rest}


def test_readme_plugin_example_passes_its_own_suite(readme_run):
    got = _outcomes(readme_run, "test_contract.py::TestDotHead")
    assert len(got) >= 20, readme_run[-3000:]
    assert set(got.values()) == {"PASSED"}, {k: v for k, v in got.items() if v != "PASSED"}


def test_clapkit_plugin_option_catches_a_broken_uninstalled_head(readme_run):
    got = _outcomes(readme_run, "test_session.py::TestBroken::test_output_follows_the_contract")
    assert list(got.values()) == ["FAILED"], readme_run[-3000:]
    assert "head 'sum_head': logits has shape (4,), expected (4, 5)" in readme_run


def test_one_plugin_host_per_session(readme_run):
    assert _outcomes(readme_run, "test_one_host_serves_the_session") == {
        "test_session.py::test_one_host_serves_the_session": "PASSED"}, readme_run[-2000:]


def test_clapkit_plugin_not_importable_is_a_usage_error(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--clapkit-plugin", "nowhere_plugin_zz", "test_x.py"],
                         capture_output=True, text=True, cwd=tmp_path)
    err = res.stdout + res.stderr
    assert res.returncode == 4, err[-2000:]          # pytest's usage-error status
    assert "--clapkit-plugin: plugin module 'nowhere_plugin_zz' is not on sys.path" in err
    assert "PYTHONPATH" in err and "Traceback" not in err
