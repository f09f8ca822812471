"""``data.valid_fraction``: a selection split held out of the train split, never the test
split; the task-end figures then come from the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clapkit.data.demo import ensure_demo
from clapkit.engine.data import HELD_OUT, held_out_items
from clapkit.engine.runner import run_recipe
from clapkit.errors import RecipeError
from clapkit.evaluation import eval_target
from clapkit.plugins import get_plugin_host

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo_finetune_baseline.toml"


def test_held_out_items_are_stratified_deterministic_and_never_a_whole_class():
    labels = [0] * 10 + [1] * 5 + [2] * 1 + [3] * 2
    got = held_out_items(labels, 0.2)
    assert got == held_out_items(labels, 0.2)                 # the same for every call
    per_class = {c: sum(labels[i] == c for i in got) for c in range(4)}
    assert per_class == {0: 2, 1: 1, 2: 0, 3: 1}              # >= 1, never all of a class
    assert held_out_items(labels, 0.2, seed=1) != got


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("held_out")
    host = get_plugin_host(autoload_third_party=False)
    root = ensure_demo("incremental", tmp / "data", tiny=True, host=host)
    over = [f'data.root="{root}"', f'cache.dir="{tmp / "cache"}"', "run.progress=false",
            "data.valid_fraction=0.34", f'data.valid_split="{HELD_OUT}"',
            'data.test_split="test"', 'run.select="valid/uar"', "stages.finetune.epochs=3",
            "scenario.task_to_cls_num=[10,10]"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_recipe(RECIPE, host=host, out_dir=tmp / "run", overrides=over)
    finally:
        torch.set_num_threads(threads)
    return tmp, host, over, summary, root


def test_training_never_sees_the_held_out_items(held_out_run):
    from clapkit.engine.stage_runner import stage_items
    from clapkit.engine.trainer import Trainer
    from clapkit.recipe import load_recipe
    tmp, host, over, _, _ = held_out_run
    tr = Trainer(load_recipe(RECIPE, host, over), host, out_dir=tmp / "probe")
    tr.device = torch.device("cpu")
    from clapkit.engine.distributed import DistInfo
    tr.info = DistInfo()
    tr._build()
    tr.memory = []
    held = tr.data.held_out
    assert held and tr.data.valid_split == HELD_OUT and tr.data.report_split == "test"
    for task in range(2):
        trained = set(stage_items(tr, task, tr.recipe.stages[0]))
        selected = set(tr.eval_indices(HELD_OUT, task))
        assert trained and selected and not trained & selected
        assert selected <= held
    labels = tr.data.labels["train"]
    assert sorted({labels[i] for i in held}) == list(range(20))   # every class is selected on


def test_selection_on_held_out_and_figures_on_test(held_out_run):
    tmp, host, _, summary, _ = held_out_run
    assert summary["select_split"] == HELD_OUT
    assert (tmp / "run" / "checkpoints" / "best.pt").is_file()
    assert "split 'test'" in next(v for k, v in summary["figures"].items()
                                  if k.startswith("last_acc"))
    ev, _ = eval_target(tmp / "run", host, checkpoint="last", split="test", out=tmp / "e")
    assert ev["top1"] == summary["last_acc"]                 # the matrix is on the test split
    held, _ = eval_target(tmp / "run", host, checkpoint="best", split="valid", out=tmp / "e")
    assert held["split_name"] == HELD_OUT and held["uar"] == summary["final/valid_uar"]
    matrix = json.loads((tmp / "run" / "accuracy_matrix.json").read_text())
    assert matrix["split"] == "test"


@pytest.mark.parametrize("over, key", [
    (["data.valid_fraction=0.2"], "data.valid_split"),               # still names "test"
    ([f'data.valid_split="{HELD_OUT}"'], "data.valid_fraction"),
    (["data.valid_fraction=0.2", f'data.valid_split="{HELD_OUT}"', "data.test_split=\"nope\""],
     "data.test_split"),
])
def test_inconsistent_held_out_keys_name_the_key(held_out_run, over, key):
    from clapkit.recipe_check import check_recipe
    tmp, host, _, _, root = held_out_run
    base = [f'data.root="{root}"', f'cache.dir="{tmp / "cache"}"']
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        check_recipe(RECIPE, host, [*base, *over])
