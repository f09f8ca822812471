"""``clapkit recipe check`` builds what a run builds: every shipped recipe, and the failures a
run would otherwise only meet after loading data and weights."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from clapkit.cli import main
from clapkit.errors import ClapkitError
from clapkit.plugins import get_plugin_host
from clapkit.recipe_check import check_recipe, no_network

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo_caer_staged.toml"
ZERO_SHOT = Path(__file__).resolve().parents[1] / "recipes" / "zero_shot.toml"


@pytest.fixture(scope="module")
def host():
    return get_plugin_host()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("check-work")


def _cache(work):
    return [f'cache.dir="{work / "cache"}"']


def _tiny_overrides(recipe: Path) -> list[str]:
    """Deep prompts deeper than the tiny model's 2 blocks (e.g. MaPLe depth = 9 for
    ViT-B-16) are set to 2: the check then still builds every component and stage."""
    import tomllib
    out = []
    table = tomllib.loads(recipe.read_text())
    for name, spec in (table.get("prompts") or {}).items():
        if isinstance(spec, dict) and isinstance(spec.get("depth"), int) and spec["depth"] > 2:
            out.append(f"prompts.{name}.depth=2")
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_shipped_recipe_builds_on_tiny_stand_ins(recipe, host, work):
    """Every recipe in recipes/ (new ones included, by globbing the folder): validated, then
    its pipeline built with the tiny backbone and generated data of its dataset's layout,
    and every stage's globs select parameters."""
    report = check_recipe(recipe, host, [*_cache(work), *_tiny_overrides(recipe)],
                          work_dir=work, stand_ins=True)
    assert len(report.stages) == len(report.recipe.stages)
    assert all(n > 0 for n in report.stages.values())
    assert any("data" in n for n in report.notes) and any("backbone" in n for n in report.notes)


def _demo_check(host, work, *overrides):
    return check_recipe(DEMO, host, [*_cache(work), *overrides], work_dir=work, stand_ins=True)


def test_stage_that_selects_no_parameter_fails_the_check(host, work):
    # handcrafted prompts have no parameters: a run would crash at its first optimizer
    with pytest.raises(ClapkitError, match=r"stages\[0\]\.train.*'prompts\.desc\.\*' selects no "
                                           r"parameter"):
        _demo_check(host, work, 'stages.0.train=["prompts.desc.*"]')


def test_duplicate_stage_names_fail_the_check(host, work):
    with pytest.raises(ClapkitError, match="two stages are named 'all'"):
        _demo_check(host, work, "stages.0.name=all")


def test_unknown_head_view_fails_the_check(host, work):
    with pytest.raises(ClapkitError, match="head.view: no prompt named 'nope'"):
        _demo_check(host, work, "head.view=nope")


def test_momentum_with_adamw_fails_the_check(host, work):
    with pytest.raises(ClapkitError, match="momentum applies to optimizer = \"sgd\" only"):
        _demo_check(host, work, "stages.prompts.momentum=0.5")


def test_task_sizes_are_checked_against_the_real_data(host, work):
    """With the data on disk (the demo generates its own), task_to_cls_num must sum to the
    dataset's classes; on stand-in data it is reported as not checked."""
    with pytest.raises(ClapkitError, match="task_to_cls_num.*sum to the dataset's 7 classes"):
        check_recipe(DEMO, host, [*_cache(work), "scenario.task_to_cls_num=[3, 3]"],
                     work_dir=work)
    report = _demo_check(host, work, "scenario.task_to_cls_num=[3, 3]")
    assert any("task_to_cls_num: not checked" in n for n in report.notes)


def test_epochs_zero_is_reported_as_skipped_and_evaluation_only(host, work):
    report = _demo_check(host, work, "stages.prompts.epochs=0")
    assert any("stage 'prompts': epochs = 0, skipped" in n for n in report.notes)
    assert not any("no stage trains" in n for n in report.notes)
    report = check_recipe(ZERO_SHOT, host, _cache(work), work_dir=work, stand_ins=True)
    assert any("evaluates the pipeline as built" in n for n in report.notes)


def test_no_network_refuses_at_once():
    t0 = time.time()
    with no_network(), pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("huggingface.co", 443), timeout=30)
    assert time.time() - t0 < 1.0
    socket.getaddrinfo("localhost", 80)          # restored afterwards


def test_check_cli_swapped_head_and_notes(work, capsys):
    """The bar's first step: swapping the head by --set passes the (building) check."""
    with pytest.raises(SystemExit) as code:
        main(["recipe", "check", str(DEMO), "--set", "head.plugin=cosine", *sum(
            (["--set", o] for o in _cache(work)), [])])
    out = capsys.readouterr().out
    assert code.value.code == 0 and "ok" in out and "trainable" in out


def test_a_build_error_on_the_stand_in_backbone_says_so(host, work, monkeypatch):
    """When the recipe's architecture cannot be built offline either (here: the plugin
    declares no ``offline_options``) the check builds on the tiny stand-in; an error that may
    come from the stand-in's size says so (here a prompt depth beyond its 2 blocks)."""
    monkeypatch.delitem(host.registries["backbone"].get("open_clip").meta, "offline_options")
    with pytest.raises(ClapkitError, match=r"depth.*built on the backbone's test stand-in"):
        check_recipe(RECIPES[0].parent / "maple.toml", host,
                     [*_cache(work), "backbone.model=ViT-B-16", "backbone.pretrained=openai",
                      "prompts.text.depth=9"], work_dir=work)


def test_missing_weights_check_the_recipes_own_architecture(work, capsys):
    """Weights not on this machine: the check builds the recipe's model randomly initialised
    (open_clip's ``offline_options``), so MaPLe depth 9 is checked against ViT-B-16's 12
    blocks, and the note says what was not verified. The shipped recipe passes (with two
    text templates instead of the recipe's 18: their features through ViT-B-16's text
    tower are most of the check's time, and they do not touch what is tested here)."""
    maple = RECIPES[0].parent / "clap4clip_cifar100_maple.toml"
    two = "['a photo of a {}.', 'a bad photo of a {}.']"   # the sigma init needs a variance
    with pytest.raises(SystemExit) as code:
        main(["recipe", "check", str(maple), "--set", _cache(work)[0],
              "--set", f'backbone.cache_dir="{work / "no-weights"}"',
              "--set", 'adapters.variational.template_set=""',
              "--set", f"adapters.variational.templates={two}",
              "--set", 'losses.lasp.template_set=""',
              "--set", f"losses.lasp.templates={two}"])
    out = capsys.readouterr().out
    assert code.value.code == 0, out
    note = next(line for line in out.splitlines() if line.startswith("note: backbone:"))
    assert "built offline (pretrained = '')" in note and "weights themselves were not" in note
    assert "test stand-in" not in note


def test_offline_uncached_tag_is_one_clear_error(monkeypatch):
    """No retries with backoff: one failed attempt, one error naming the tag and the key."""
    from clapkit_plugins.backbones import open_clip as oc
    monkeypatch.setattr(oc, "_tag_weights_cached", lambda cfg, tag: False)
    t0 = time.time()
    with no_network(), pytest.raises(ClapkitError) as err:
        oc.OpenClipBackbone(oc.OpenClipConfig(model="ViT-B-16", pretrained="openai"))
    assert time.time() - t0 < 5
    msg = str(err.value)
    assert "backbone.pretrained = 'openai'" in msg and "ViT-B-16" in msg
    assert "--set backbone.pretrained=/path/to/" in msg and len(msg.splitlines()) == 1
