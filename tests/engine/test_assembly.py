"""One assembly for every command: what ``clapkit run`` refuses before its first step,
``clapkit recipe check`` and ``clapkit eval`` refuse with the same message."""

from __future__ import annotations

import pytest

import engine_standins as es
from clapkit.engine.runner import run_recipe
from clapkit.errors import ClapkitError
from clapkit.evaluation import eval_target
from clapkit.plugins import get_plugin_host
from clapkit.recipe_check import check_recipe

#: recipes a run refuses at build, each for its own reason (rules, data, pipeline)
BAD = {
    "stage in no task": ['stages.0.tasks="only:7"'],
    "memory without selector": ["memory.size=4"],
    "no such train split": ['data.train_split="nope"'],
    "no such valid split": ['data.valid_split="nope"'],
    "class without items": ["data.train_counts=[6, 0, 6, 6]"],
    "streams without fusion": ['data.streams=["image", "face"]'],
}


@pytest.fixture(scope="module")
def host():
    return get_plugin_host()


def _message(call) -> str:
    with pytest.raises(ClapkitError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_check_refuses_what_run_refuses_with_the_same_message(case, tmp_path, host):
    path = es.write_recipe(tmp_path)
    overrides = [*es.base_overrides(tmp_path), *BAD[case]]
    from_run = _message(lambda: run_recipe(path, overrides=overrides, out_dir=tmp_path / "r",
                                           host=host))
    from_check = _message(lambda: check_recipe(path, host, overrides,
                                               work_dir=tmp_path / "w"))
    assert from_check == from_run
    assert "recipe.toml" in from_run or "t_colors" in from_run or "ColorsSource" in from_run
    assert not (tmp_path / "r" / "summary.json").exists()


def test_eval_refuses_at_build_as_run_does(tmp_path, host):
    path = es.write_recipe(tmp_path)
    overrides = [*es.base_overrides(tmp_path), 'data.valid_split="nope"']
    from_run = _message(lambda: run_recipe(path, overrides=overrides, out_dir=tmp_path / "r",
                                           host=host))
    from_eval = _message(lambda: eval_target(path, host, split="valid", out=tmp_path / "e",
                                             overrides=overrides))
    assert from_eval == from_run


def test_a_good_recipe_checks_and_names_no_stand_in(tmp_path, host):
    path = es.write_recipe(tmp_path)
    report = check_recipe(path, host, es.base_overrides(tmp_path), work_dir=tmp_path / "w")
    assert set(report.stages) == {"prompt", "adapter"}
    assert not any("stand-in" in n for n in report.notes)
