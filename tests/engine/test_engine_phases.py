"""Per-task stage phases: which tasks a stage runs in, on which data, with which sampler,
before or after the memory update; ``{task}`` in parameter globs."""

from __future__ import annotations

import pytest
import torch

import engine_standins as es
from clapkit import hookimpl
from clapkit.engine import stage_runner
from clapkit.engine.runner import run_recipe
from clapkit.engine.sampling import EpochSampler
from clapkit.engine.trainer import Trainer
from clapkit.errors import ClapkitError
from clapkit.plugins import get_plugin_host
from clapkit.sections import StageConfig

from test_engine_lifecycle import RECIPE as GROW

BASE = GROW.split("[[stages]]")[0].replace('splits = ["train", "valid", "test"]\n'
                                           'test_split = "test"\n', "")
PHASES = BASE + '''
[[stages]]
name = "first"
tasks = "first"
train = ["prompts.text.deltas.{task}"]
epochs = 1
lr = 0.05

[[stages]]
name = "later"
tasks = "later"
data = "task"
train = ["prompts.text.deltas.{task}"]
lr_groups = { "prompts.text.deltas.{task}" = 0.01 }
epochs = 1
lr = 0.05

[[stages]]
name = "balanced"
after_memory = true
data = "memory"
sampler = "class_balanced"
train = ["prompts.text.deltas.*"]
epochs = 1
lr = 0.01
'''


@pytest.mark.parametrize("spec,tasks", [("all", [0, 1, 2, 3]), ("first", [0]),
                                        ("later", [1, 2, 3]), ("from:2", [2, 3]),
                                        ("only:1", [1])])
def test_stage_tasks_option(spec, tasks):
    stage = StageConfig(name="s", train=["x"], tasks=spec)
    assert [t for t in range(4) if stage.runs_in(t)] == tasks


@pytest.mark.parametrize("key,value,allowed", [
    ("tasks", '"sometimes"', "from:K"), ("data", '"all"', "task+memory"),
    ("sampler", '"random"', "class_balanced"), ("after_memory", '"yes"', "")])
def test_bad_stage_options_name_the_key(tmp_path, key, value, allowed):
    from clapkit.recipe import load_recipe
    text = PHASES.replace('tasks = "first"\n', f"{key} = {value}\n" if key == "tasks"
                          else f'tasks = "first"\n{key} = {value}\n', 1)
    path = es.write_recipe(tmp_path, text, name="bad.toml")
    with pytest.raises(ClapkitError) as err:
        load_recipe(path, get_plugin_host())
    msg = str(err.value)
    assert "bad.toml" in msg and f"stages[0].{key}" in msg and allowed in msg


def test_unknown_placeholder_and_memory_less_phases_are_errors(tmp_path):
    from clapkit.recipe import load_recipe
    host = get_plugin_host()
    bad = es.write_recipe(tmp_path, PHASES.replace("deltas.{task}\"]\nepochs = 1\nlr = 0.05\n\n"
                                                   "[[stages]]\nname = \"later\"",
                                                   "deltas.{tsk}\"]\nepochs = 1\nlr = 0.05\n\n"
                                                   "[[stages]]\nname = \"later\"", 1),
                          name="a.toml")
    with pytest.raises(ClapkitError, match=r"stages\[0\]\.train.*\{task\}"):
        Trainer(load_recipe(bad, host), host, out_dir=tmp_path / "o")
    no_mem = es.write_recipe(tmp_path, PHASES.replace("[memory]\nsize = 4\n", "")
                             .replace('[selector]\nplugin = "t_first"\n', ""), name="b.toml")
    with pytest.raises(ClapkitError, match=r"stages\[2\]\.data.*memory.size"):
        Trainer(load_recipe(no_mem, host), host, out_dir=tmp_path / "o")


def test_class_balanced_sampler_draws_equal_counts_fresh_each_epoch():
    labels = [0] * 8 + [1] * 3 + [2] * 5
    idx = list(range(100, 116))
    s = EpochSampler(idx, balance=labels, seed=3)
    assert len(s) == 9
    seen = set()
    for epoch in range(4):
        s.set_epoch(epoch)
        got = list(s)
        assert len(got) == 9 and len(set(got)) == 9
        counts = torch.bincount(torch.tensor([labels[i - 100] for i in got]), minlength=3)
        assert counts.tolist() == [3, 3, 3]
        seen |= set(got)
    assert len(seen) > 9          # the big classes contribute different items per epoch
    # DDP shards of a balanced epoch cover it (padded to a multiple of the world size)
    s.set_epoch(0)
    shards = [list(EpochSampler(idx, balance=labels, seed=3, rank=r, world_size=2))
              for r in range(2)]
    assert [len(x) for x in shards] == [5, 5] and set(shards[0] + shards[1]) == set(s)


class Order:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    @hookimpl
    def clapkit_stage_start(self, run, task, stage, trainable):
        self.events.append(("stage", task, stage, tuple(trainable)))

    @hookimpl
    def clapkit_epoch_end(self, run, task, stage, epoch, metrics):
        self.events.append(("lrs", task, stage, tuple(k for k in metrics if k.startswith("lr/"))))


def test_phases_run_in_their_tasks_on_their_data_after_the_memory(tmp_path, monkeypatch):
    items_of: dict[tuple[int, str], list[int]] = {}
    orig_items = stage_runner.stage_items

    def spy_items(tr, task, stage):
        out = orig_items(tr, task, stage)
        items_of[(task, stage.name)] = out
        order.events.append(("items", task, stage.name, tuple(tr.memory)))
        return out
    monkeypatch.setattr(stage_runner, "stage_items", spy_items)
    orig_mem = Trainer._update_memory

    def spy_mem(self, task):
        out = orig_mem(self, task)
        order.events.append(("memory", task, tuple(out[0])))
        return out
    monkeypatch.setattr(Trainer, "_update_memory", spy_mem)

    order = Order()
    host = get_plugin_host()
    host.register_listener(order, name="order")
    path = es.write_recipe(tmp_path, PHASES)
    try:
        run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "o",
                   host=host)
    finally:
        host.unregister_listener(order)
    stages = [(e[1], e[2]) for e in order.events if e[0] == "stage"]
    assert stages == [(0, "first"), (0, "balanced"), (1, "later"), (1, "balanced"),
                      (2, "later"), (2, "balanced")]
    marks = [(e[0], e[1], e[2] if e[0] == "stage" else None) for e in order.events
             if e[0] in ("stage", "memory")]
    # the memory is updated in every task (also the last: a stage runs after it), between
    # the task's other stages and its after-memory stage
    for t in range(3):
        before = "first" if t == 0 else "later"
        assert (marks.index(("stage", t, before)) < marks.index(("memory", t, None))
                < marks.index(("stage", t, "balanced")))
    mem_events = [e for e in order.events if e[0] == "memory"]
    assert len(mem_events) == 3
    source = es.ColorsSource(es.ColorsConfig(num_classes=6, train_counts=[4] * 6,
                                             valid_counts=[2] * 6))
    labels = [r.label for r in source.refs("train")]
    for t in range(3):
        memory = list(mem_events[t][2])
        assert items_of[(t, "balanced")] == sorted(memory)              # data = "memory"
        first_after = next(i for i, e in enumerate(order.events)
                           if e[:3] == ("items", t, "balanced"))
        assert order.events[first_after][3] == tuple(memory)            # after the update
    for t in (1, 2):                                                     # data = "task"
        assert {labels[i] for i in items_of[(t, "later")]} == {2 * t, 2 * t + 1}
    lrs = [e for e in order.events if e[0] == "lrs" and e[2] == "later"]
    assert lrs[0][3] == ("lr/prompts.text.deltas.1",)
    assert lrs[1][3] == ("lr/prompts.text.deltas.2",)


class CrashAt:
    def __init__(self, n: int) -> None:
        self.n, self.saves = n, 0

    @hookimpl
    def clapkit_checkpoint_saved(self, run, path):
        if path.endswith("last.pt"):
            self.saves += 1
            if self.saves == self.n:
                raise RuntimeError("killed")


def test_resume_inside_an_after_memory_stage(tmp_path, monkeypatch):
    from clapkit.engine import checkpoint as ckpt
    text = PHASES.replace('after_memory = true\ndata = "memory"\nsampler = "class_balanced"\n'
                          'train = ["prompts.text.deltas.*"]\nepochs = 1',
                          'after_memory = true\ndata = "memory"\nsampler = "class_balanced"\n'
                          'train = ["prompts.text.deltas.*"]\nepochs = 2')
    path = es.write_recipe(tmp_path, text)
    over = es.base_overrides(tmp_path)
    run_recipe(path, overrides=over, out_dir=tmp_path / "a")
    host = get_plugin_host()
    crash = CrashAt(6)          # task 0: 1 + 2 epochs + end; task 1: "later", balanced epoch 0
    host.register_listener(crash, name="crash")
    try:
        with pytest.raises(RuntimeError, match="killed"):
            run_recipe(path, overrides=over, out_dir=tmp_path / "b", host=host)
    finally:
        host.unregister_listener(crash)
    st = ckpt.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (st["position"]["task"], st["position"]["stage"], st["position"]["epoch"]) == (1, 2, 0)
    updates = []
    orig = Trainer._update_memory
    monkeypatch.setattr(Trainer, "_update_memory",
                        lambda self, task: updates.append(task) or orig(self, task))
    run_recipe(path, overrides=over, out_dir=tmp_path / "b", resume=True)
    assert updates == [2]                       # task 1's memory came from the checkpoint
    a = ckpt.load(tmp_path / "a" / "checkpoints" / "last.pt")
    b = ckpt.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["memory"] == b["memory"] and a["task_memory"] == b["task_memory"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_stage_that_runs_in_no_task_is_an_error(tmp_path):
    path = es.write_recipe(tmp_path, PHASES.replace('tasks = "later"', 'tasks = "from:3"'))
    with pytest.raises(ClapkitError, match=r"stages\[1\]\.tasks.*runs in no task.*3 task"):
        run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "o")
