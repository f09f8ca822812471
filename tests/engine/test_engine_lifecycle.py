"""Task lifecycle: components grow per task, see a TaskView at task end, and a run
interrupted mid-task resumes to the same weights (growth replayed before loading)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import engine_standins as es
from clapkit import hookimpl
from clapkit.engine import checkpoint as ckpt
from clapkit.engine.runner import run_recipe
from clapkit.plugins import get_plugin_host

RECIPE = '''
plugins = ["engine_standins"]

[run]
name = "grow"
seed = 0
progress = false

[data]
plugin = "t_colors"
batch_size = 4
num_classes = 6
train_counts = [4, 4, 4, 4, 4, 4]
valid_counts = [2, 2, 2, 2, 2, 2]
splits = ["train", "valid", "test"]
test_split = "test"

[scenario]
task_to_cls_num = [2, 2, 2]

[memory]
size = 4

[selector]
plugin = "t_first"

[backbone]
plugin = "open_clip"
model = "clapkit-tiny"

[prompts.text]
plugin = "t_growing"

[head]
plugin = "cosine"
temperature = 0.05

[losses.ce]
plugin = "t_ce"

[[stages]]
name = "current"
train = ["prompts.text.deltas.{task}"]
epochs = 2
lr = 0.05

[log.jsonl]
plugin = "jsonl"
'''


class Crash(Exception):
    pass


class Recorder:
    """Stage starts, task-end metrics; raises after the n-th last.pt when asked."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.crash_after, self.saves = crash_after, 0
        self.stages: list[tuple[int, str, list[str]]] = []
        self.task_end: dict[int, dict] = {}
        self.deltas: dict[int, dict] = {}

    @hookimpl
    def clapkit_stage_start(self, run, task, stage, trainable):
        self.stages.append((task, stage, trainable))

    @hookimpl
    def clapkit_task_end(self, run, task, metrics):
        self.task_end[task] = metrics
        self.deltas[task] = {k: v.detach().clone()
                             for k, v in run.model.prompts["text"].deltas.items()}

    @hookimpl
    def clapkit_task_evaluate(self, run, task, evaluation):
        """A plugin evaluation: counts the valid items of the seen tasks it is shown and the
        largest logit index that is finite (the seen classes only)."""
        count, finite = [0], []

        def see(batch, outputs):
            count[0] += int(batch["label"].shape[0])
            finite.append(int(torch.isfinite(outputs["logits"]).sum(1).max()))
        evaluation.run(evaluation.splits["valid"], range(task + 1), see)
        return {"mine/items": count[0], "mine/finite_classes": max(finite),
                "mine/seen": evaluation.seen_classes}

    @hookimpl
    def clapkit_checkpoint_saved(self, run, path):
        if path.endswith("last.pt"):
            self.saves += 1
            if self.saves == self.crash_after:
                raise Crash(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grow")
    path = es.write_recipe(tmp, RECIPE)
    over = es.base_overrides(tmp)
    es.GrowingPrompt.calls.clear()
    rec = Recorder()
    host = get_plugin_host()
    host.register_listener(rec, name="rec-straight")
    try:
        summary = run_recipe(path, overrides=over, out_dir=tmp / "a", host=host)
    finally:
        host.unregister_listener(rec)
    return tmp, path, over, summary, rec, list(es.GrowingPrompt.calls)


def test_every_task_starts_grows_and_ends_with_its_view(straight):
    *_, summary, rec, calls = straight
    starts = [c for c in calls if c[0] == "start"]
    ends = [c for c in calls if c[0] == "end"]
    assert starts == [("start", 0, 2), ("start", 1, 4), ("start", 2, 6)]
    assert [c[1] for c in ends] == [0, 1, 2]
    # start(t) comes before end(t), which comes before start(t+1)
    assert [c[:2] for c in calls] == [("start", 0), ("end", 0), ("start", 1), ("end", 1),
                                     ("start", 2), ("end", 2)]
    for _, t, classes, labels, zshape, streams in ends:
        assert classes == [2 * t, 2 * t + 1]
        # the task's items plus the replay memory it trained with (classes of older tasks)
        assert labels == list(range(0, 2 * t + 2))
        assert zshape[0] == 8 + (4 if t else 0) and streams == ["image"]
    # {task} in the train glob: each task trains only its own residual
    assert [(t, tr) for t, _, tr in rec.stages] == [(t, [f"prompts.text.deltas.{t}"])
                                                   for t in range(3)]


def test_task_end_view_fills_the_snapshot_and_old_parameters_stay_frozen(straight):
    tmp, *_, rec, _ = straight
    st = ckpt.load(tmp / "a" / "checkpoints" / "last.pt")["model"]
    for t in range(3):
        assert st[f"prompts.text.anchors.{t}"].abs().sum() > 0   # written by on_task_end
    # each residual trains in its own task only, then stays as it was
    assert set(rec.deltas[0]) == {"0"} and set(rec.deltas[2]) == {"0", "1", "2"}
    for t in range(3):
        assert rec.deltas[t][str(t)].abs().sum() > 0
        assert torch.equal(rec.deltas[t][str(t)], st[f"prompts.text.deltas.{t}"])


def test_task_end_metrics_row_task_aware_and_novelty(straight):
    *_, summary, rec, _ = straight
    m0, m2 = rec.task_end[0], rec.task_end[2]
    for key in ("ood/energy/auroc", "ood/msp/aupr", "ood/entropy/fpr95"):
        assert 0.0 <= m0[key] <= 1.0, key
    assert m0["ood/split"] == "test"
    assert not any(k.startswith("ood/") for k in m2)         # no future data after the last
    for m in (m0, m2):
        assert m["task_aware_acc"] >= m["acc_seen"] - 1e-9
        assert 0.0 <= m["ece"] <= 1.0
        assert m["memory_size"] == 4 or m is m2
    assert [k for k in m2 if k.startswith("acc_task/")] == ["acc_task/0", "acc_task/1",
                                                           "acc_task/2"]
    assert len(summary["accuracy_matrix"]) == 3
    assert math.isfinite(summary["final/test_war"])
    # a clapkit_task_evaluate hook extends the task-end metrics
    for t, m in rec.task_end.items():
        assert (m["mine/items"], m["mine/finite_classes"], m["mine/seen"]) == \
            (4 * (t + 1), 2 * (t + 1), 2 * (t + 1))


class Clash:
    @hookimpl
    def clapkit_task_evaluate(self, run, task, evaluation):
        return {"acc_seen": 1.0}


def test_an_evaluation_hook_may_not_overwrite_a_metric(tmp_path):
    from clapkit.errors import ClapkitError
    text = es.BASE_RECIPE.replace("epochs = 2", "epochs = 1")
    host, clash = get_plugin_host(), Clash()
    host.register_listener(clash, name="clash")
    try:
        with pytest.raises(ClapkitError, match="clapkit_task_evaluate.*'acc_seen'"):
            run_recipe(es.write_recipe(tmp_path, text), overrides=es.base_overrides(tmp_path),
                       out_dir=tmp_path / "o", host=host)
    finally:
        host.unregister_listener(clash)


def test_resume_in_task_2_replays_growth_and_reaches_the_same_weights(straight):
    tmp, path, over, summary, _, _ = straight
    shutil.rmtree(tmp / "b", ignore_errors=True)
    host = get_plugin_host()
    # saves per task: 2 epochs + task end; the 7th is epoch 0 of task index 2
    rec = Recorder(crash_after=7)
    host.register_listener(rec, name="rec-crash")
    try:
        with pytest.raises(Crash):
            run_recipe(path, overrides=over, out_dir=tmp / "b", host=host)
    finally:
        host.unregister_listener(rec)
    pos = ckpt.load(tmp / "b" / "checkpoints" / "last.pt")["position"]
    assert (pos["task"], pos["epoch"], pos["phase"]) == (2, 0, "epoch")
    es.GrowingPrompt.calls.clear()
    resumed = run_recipe(path, overrides=over, out_dir=tmp / "b", resume=True)
    # replayed starts 0..2 (no ends: their effects come from the checkpoint), then task 2 ends
    assert es.GrowingPrompt.calls[:3] == [("start", 0, 2), ("start", 1, 4), ("start", 2, 6)]
    assert [c[:2] for c in es.GrowingPrompt.calls[3:]] == [("end", 2)]
    a = ckpt.load(tmp / "a" / "checkpoints" / "last.pt")["model"]
    b = ckpt.load(tmp / "b" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in ("final/valid_uar", "final/test_war", "avg_acc" if "avg_acc" in summary else
              "epochs"):
        assert summary[k] == resumed[k], k
    rows = [json.loads(x) for x in (tmp / "b" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "task_end" for r in rows) == 3
