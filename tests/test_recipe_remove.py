"""A child recipe removes inherited tables (``remove = [...]``) instead of copying a chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from clapkit.errors import RecipeError
from clapkit.plugins import get_plugin_host
from clapkit.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def host():
    return get_plugin_host(autoload_third_party=False)


def test_the_no_memory_variant_drops_memory_selector_and_stage(host, tmp_path):
    parent = load_recipe(RECIPES / "demo_clap4clip.toml", host)
    child = load_recipe(RECIPES / "demo_clap4clip_no_memory.toml", host)
    assert parent.memory.size == 400 and parent.selector is not None
    assert child.memory.size == 0 and child.selector is None
    assert [s.name for s in child.stages] == ["task"]
    assert [s.name for s in parent.stages] == ["task", "balanced_finetune"]
    # everything else is inherited unchanged
    assert child.adapters.keys() == parent.adapters.keys()
    assert child.run.num_samples == parent.run.num_samples
    # the resolved recipe has no `remove` key and loads back equal
    text = child.to_toml()
    assert "remove" not in text.split("[")[0]
    (tmp_path / "resolved.toml").write_text(text)
    assert load_recipe(tmp_path / "resolved.toml", host).to_dict() == child.to_dict()


def _child(tmp_path, body: str) -> Path:
    (tmp_path / "child.toml").write_text(
        f'extends = "{(RECIPES / "demo_clap4clip.toml").as_posix()}"\n' + body)
    return tmp_path / "child.toml"


def test_a_named_component_goes_and_the_child_may_add_it_back(tmp_path, host):
    r = load_recipe(_child(tmp_path, 'remove = ["adapters.norm", "log.plots"]\n'), host)
    assert "norm" not in r.adapters and "plots" not in r.log
    back = load_recipe(_child(tmp_path, 'remove = ["head"]\n[head]\nplugin = "cosine"\n'),
                       host)
    assert back.head.plugin == "cosine"
    # the parent's normalize_text = false is gone with its table: the plugin's default
    assert back.head.config.normalize_text is True
    kept = load_recipe(_child(tmp_path, '[head]\nplugin = "cosine"\n'), host)
    assert kept.head.config.normalize_text is False           # merged, not removed


def test_unknown_names_and_bad_values_are_clear_errors(tmp_path, host):
    with pytest.raises(RecipeError, match=r"remove.*no table 'adapters\.nope'.*adapters\.vga"):
        load_recipe(_child(tmp_path, 'remove = ["adapters.nope"]\n'), host)
    with pytest.raises(RecipeError, match="list of table names"):
        load_recipe(_child(tmp_path, 'remove = "memory"\n'), host)
    (tmp_path / "alone.toml").write_text('remove = ["memory"]\n')
    with pytest.raises(RecipeError, match="extends none"):
        load_recipe(tmp_path / "alone.toml", host)
