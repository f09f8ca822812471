"""Scenarios: class order, task splits, class->task from labels, class-incremental runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import engine_standins as es
from clapkit.engine import checkpoint as ckpt
from clapkit.engine.loop import restrict_logits
from clapkit.engine.runner import run_recipe
from clapkit.engine.scenario import make_scenario
from clapkit.errors import RecipeError
from clapkit.sections import ScenarioConfig


def test_given_order_and_task_split_from_labels():
    sc = make_scenario(ScenarioConfig(task_to_cls_num=[2, 3]), 5)
    assert sc.num_tasks == 2 and sc.incremental
    assert sc.task_of_class == [0, 0, 1, 1, 1]
    assert sc.classes_of(1) == [2, 3, 4] and sc.seen(0) == 2
    labels = [4, 0, 1, 3, 2, 0]
    assert sc.task_of_labels(labels).tolist() == [1, 0, 0, 1, 1, 0]
    assert sc.items_of(labels, [0]) == [1, 2, 5]


def test_shuffled_order_comes_from_the_seed_and_labels_are_remapped():
    cfg = ScenarioConfig(task_to_cls_num=[2, 2, 2], class_order="shuffled",
                         class_order_seed=1993)
    sc = make_scenario(cfg, 6)
    assert list(sc.order) == np.random.RandomState(1993).permutation(6).tolist()
    assert sc == make_scenario(cfg, 6)
    table = sc.remap_table()
    assert [int(table[o]) for o in sc.order] == list(range(6))     # label -> position
    first = sc.order[:2]                                            # dataset labels of task 0
    assert sc.task_of_labels(list(first)).tolist() == [0, 0]
    assert sc.task_of_labels([sc.order[5]]).tolist() == [2]


def test_bad_task_sizes_are_recipe_errors():
    with pytest.raises(RecipeError, match="task_to_cls_num"):
        make_scenario(ScenarioConfig(task_to_cls_num=[2, 2]), 5)
    with pytest.raises(ValueError, match="task_to_cls_num"):   # the section's validator
        make_scenario(ScenarioConfig(task_to_cls_num=[5, 0]), 5)
    assert make_scenario(ScenarioConfig(), 5).sizes == (5,)


def test_unseen_classes_get_minus_inf():
    out = restrict_logits({"logits": torch.zeros(2, 5), "sample_logits": torch.zeros(3, 2, 5)}, 2)
    assert torch.isinf(out["logits"][:, 2:]).all() and (out["logits"][:, :2] == 0).all()
    assert torch.isinf(out["sample_logits"][..., 2:]).all()
    assert restrict_logits({"logits": torch.zeros(1, 2)}, None)["logits"].isfinite().all()


INCREMENTAL = es.BASE_RECIPE + '''
[scenario]
task_to_cls_num = [2, 2]
class_order = "shuffled"
class_order_seed = 7

[memory]
size = 4

[selector]
plugin = "t_first"

[log.jsonl]
plugin = "jsonl"
'''


def test_class_incremental_run_with_memory(tmp_path):
    path = es.write_recipe(tmp_path, INCREMENTAL)
    s = run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
    order = np.random.RandomState(7).permutation(4).tolist()
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in rows if r["event"] == "task_start"]
    assert [r["classes"] for r in starts] == [[0, 1], [2, 3]]
    ends = [r["metrics"] for r in rows if r["event"] == "task_end"]
    # after task 0 only the first two classes (positions) are predicted and evaluated
    conf0 = np.asarray(ends[0]["valid/confusion"])
    assert conf0[:, 2:].sum() == 0 and conf0[2:].sum() == 0 and conf0.sum() == 6
    assert np.asarray(ends[1]["valid/confusion"]).sum() == 12
    assert ends[0]["memory_size"] == 4
    # memory: 2 exemplars of each task-0 class (dataset labels order[0], order[1])
    st = ckpt.load(tmp_path / "out" / "checkpoints" / "last.pt")
    train_labels = [c for c in range(4) for _ in range(6)]
    assert sorted(train_labels[i] for i in st["memory"]) == sorted([order[0]] * 2 + [order[1]] * 2)
    # accuracy matrix and incremental metrics
    assert len(s["accuracy_matrix"]) == 2 and len(s["accuracy_matrix"][1]) == 2
    for k in ("avg_incremental_acc", "last_acc", "forgetting", "bwt"):
        assert k in s
    assert s["last_acc"] == pytest.approx(ends[1]["acc_seen"])
    assert st["class_order"] == order


def test_memory_without_selector_is_an_error(tmp_path):
    path = es.write_recipe(tmp_path, INCREMENTAL.replace('[selector]\nplugin = "t_first"\n', ""))
    with pytest.raises(RecipeError, match="selector"):
        run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
