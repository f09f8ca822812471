"""Classification is one objective among others: a recipe with no [head] runs, its losses
read features and text, an evaluation plugin's metric selects the model (``run.select``)."""

from __future__ import annotations

import json

import pytest

import engine_standins as es
from clapkit.engine.runner import run_recipe
from clapkit.errors import ClapkitError
from clapkit.plugins import get_plugin_host
from clapkit.recipe_check import check_recipe

NO_HEAD = es.BASE_RECIPE.replace('plugins = ["engine_standins"]',
                                 'plugins = ["engine_standins", "objective_standins"]') \
    .replace('[head]\nplugin = "cosine"\ntemperature = 0.05\n', "") \
    .replace('[losses.ce]\nplugin = "t_ce"', '[losses.align]\nplugin = "t_align"') \
    .replace('[run]\nname = "t"', '[run]\nname = "t"\nselect = "valid/text_r1"')


@pytest.fixture(scope="module")
def host():
    return get_plugin_host()


def test_a_run_without_head_learns_and_selects_by_a_plugin_metric(tmp_path, host):
    assert "[head]" not in NO_HEAD
    path = es.write_recipe(tmp_path, NO_HEAD)
    check_recipe(path, host, es.base_overrides(tmp_path), work_dir=tmp_path / "w")
    summary = run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "o",
                         host=host)
    assert (tmp_path / "o" / "checkpoints" / "best.pt").is_file()
    assert 0.25 < summary["best/valid_text_r1"] <= 1.0          # 4 classes: chance 0.25
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["best/valid_text_r1"] \
        == summary["best/valid_text_r1"]


def test_a_classification_selection_without_head_is_refused_at_check(tmp_path, host):
    path = es.write_recipe(tmp_path, NO_HEAD)
    with pytest.raises(ClapkitError, match=r"run\.select.*no \[head\]"):
        check_recipe(path, host, [*es.base_overrides(tmp_path), 'run.select="valid/uar"'],
                     work_dir=tmp_path / "w")


def test_a_selection_metric_nothing_produces_names_the_produced_ones(tmp_path, host):
    path = es.write_recipe(tmp_path, NO_HEAD)
    with pytest.raises(ClapkitError) as err:
        run_recipe(path, overrides=[*es.base_overrides(tmp_path), 'run.select="valid/nope"'],
                   out_dir=tmp_path / "o", host=host)
    msg = str(err.value)
    assert "run.select" in msg and "valid/nope" in msg and "valid/text_r1" in msg


def test_last_selects_nothing(tmp_path, host):
    path = es.write_recipe(tmp_path)
    run_recipe(path, overrides=[*es.base_overrides(tmp_path), 'run.select="last"'],
               out_dir=tmp_path / "o", host=host)
    assert not (tmp_path / "o" / "checkpoints" / "best.pt").exists()


CAPTIONS = NO_HEAD.replace('plugin = "t_colors"', 'plugin = "t_captioned"') \
    .replace('[losses.align]\nplugin = "t_align"', '[losses.caption]\nplugin = "t_caption_align"') \
    .replace('select = "valid/text_r1"', 'select = "last"')


@pytest.mark.parametrize("cache", ["off", "on"])
def test_items_carry_their_captions_to_the_losses_on_both_paths(tmp_path, host, cache):
    import objective_standins as ob
    ob.SEEN.clear()
    text = CAPTIONS.replace('train = ["prompts.*"]', 'train = ["adapters.*"]', 1)
    path = es.write_recipe(tmp_path, text)
    run_recipe(path, overrides=[*es.base_overrides(tmp_path), f'cache.enabled="{cache}"'],
               out_dir=tmp_path / "o", host=host)
    assert ob.SEEN, "the caption loss never ran"
    for cached, texts, groups in ob.SEEN:
        assert cached == (cache == "on")
        assert len(texts) == len(groups) and all(len(t) == 2 for t in texts)
        assert all(t[0].startswith("a ") and t[0].endswith(" square") for t in texts)
        assert all(g.startswith("img:train/") for g in groups)
