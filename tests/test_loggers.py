"""The logger plugins, driven through the real pluggy event hooks with a stand-in run."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext
from clapkit.plugins import PluginHost, get_plugin_host

CLASSES = ["anger", "happiness", "neutral"]


@pytest.fixture(scope="module")
def registries():
    return get_plugin_host(autoload_third_party=False).registries


def make_run(tmp_path: Path, rank: int = 0) -> SimpleNamespace:
    recipe = SimpleNamespace(run=SimpleNamespace(name="demo"),
                             stages=[SimpleNamespace(name="prompt", epochs=2),
                                     SimpleNamespace(name="all", epochs=1)])
    return SimpleNamespace(out_dir=tmp_path / "run", recipe=recipe, rank=rank,
                           class_names=list(CLASSES), num_tasks=2)


def epoch_metrics(i: int, with_dc: bool = False) -> dict:
    m = {"loss/ce": 1.1 - 0.1 * i, "loss/mi": 0.1, "loss/total": 1.234 - 0.1 * i,
         "train/war": 0.452 + 0.01 * i, "train/uar": 0.401, "valid/war": 0.503 + 0.01 * i,
         "valid/uar": 0.487, "best/valid_war": 0.503 + 0.01 * i, "best/valid_uar": 0.487,
         "best/train_war": 0.452, "best/train_uar": 0.401, "lr/prompt": 1e-3,
         "valid/confusion": [[5, 1, 0], [2, 12, 1], [0, 3, 100]], "select_split": "valid"}
    if with_dc:
        m["loss/dc"] = 0.05
    return m


SUMMARY = {"avg_incremental_acc": 0.71, "last_acc": 0.62, "forgetting": 0.05, "bwt": -0.04,
           "best/valid_war": 0.553, "best/valid_uar": 0.560, "final/valid_war": 0.560,
           "final/valid_uar": 0.551}


def build(registries, name: str, **options):
    entry = registries.logger.get(name)
    return entry.factory(entry.config_cls(**options), BuildContext())


def drive(listener, run) -> None:
    """A whole 2-task run: task 0 with stages prompt (2 epochs) + all (1), task 1 prompt."""
    host = PluginHost()
    host.register_listener(listener)
    h = host.hook
    h.clapkit_run_start(run=run)
    for task, classes in ((0, [0, 1]), (1, [2])):
        h.clapkit_task_start(run=run, task=task, classes=classes)
        stages = (("prompt", 2), ("all", 1)) if task == 0 else (("prompt", 2),)
        for stage, epochs in stages:
            h.clapkit_stage_start(run=run, task=task, stage=stage, trainable=["prompt.ctx"])
            for e in range(epochs):
                h.clapkit_epoch_end(run=run, task=task, stage=stage, epoch=e,
                                    metrics=epoch_metrics(e, with_dc=stage == "all"))
                h.clapkit_checkpoint_saved(run=run, path=str(run.out_dir / "last.pt"))
            h.clapkit_stage_end(run=run, task=task, stage=stage)
        accs = {0: {"acc_seen": 0.8, "acc_task/0": 0.8},
                1: {"acc_seen": 0.62, "acc_task/0": 0.75, "acc_task/1": 0.5}}[task]
        h.clapkit_task_end(run=run, task=task, metrics=accs)
    h.clapkit_run_end(run=run, summary=SUMMARY)


def test_registered_with_configs(registries):
    assert {"console", "jsonl", "tensorboard", "plots"} <= set(registries.logger.names())
    with pytest.raises(ValueError):
        registries.logger.get("plots").config_cls(every=0)


# --- console ---------------------------------------------------------------------------------

def test_console_lines_and_final_uar(registries, tmp_path, capsys):
    drive(build(registries, "console"), make_run(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert ("[task 0 | stage prompt | epoch 2/2] loss 1.134 (ce 1, mi 0.1) | train WAR 46.2 "
            "UAR 40.1 | valid WAR 51.3 UAR 48.7 | best valid WAR 51.3 UAR 48.7 | "
            "lr prompt 1.00e-03") in out
    assert any(line.startswith("[task 0 | stage all | epoch 1/1] loss 1.234 (ce 1.1, mi 0.1, "
                               "dc 0.05)") for line in out)
    # confusion table: header + one row per class (full names), all aligned
    i = out.index(next(line for line in out if line.startswith("true \\ pred")))
    table = out[i:i + 4]
    assert table[0].split() == ["true", "\\", "pred", "0", "1", "2", "recall"]
    assert table[2].split() == ["1", "happiness", "2", "12", "1", "80.0%"]
    assert table[3].split() == ["2", "neutral", "0", "3", "100", "97.1%"]
    assert len({len(row) for row in table}) == 1
    assert any("task 1 done" in line and "0:75.0 1:50.0" in line for line in out)
    assert any("avg incremental acc 71.0" in line and "BWT -4.0" in line for line in out)
    # the acceptance script: last line mentioning uar, number within 12 non-digits after it
    last = [line for line in out if re.search("uar", line, re.I)][-1]
    m = re.search(r"uar\D{0,12}?(\d+(?:\.\d+)?)", last, re.I)
    assert m and float(m.group(1)) == pytest.approx(55.1)


def _confusions(out):
    return [i for i, line in enumerate(out) if line.startswith("valid confusion matrix")]


def test_console_confusion_at_new_best_and_at_the_end_only(registries, tmp_path, capsys):
    """epoch_metrics keep valid UAR at 0.487: a new best in the first epoch of each task
    only; the task end (with a confusion in its metrics) prints it once more."""
    run = make_run(tmp_path)
    listener = build(registries, "console")
    host = PluginHost()
    host.register_listener(listener)
    h = host.hook
    h.clapkit_run_start(run=run)
    for e in range(3):
        m = epoch_metrics(e)
        m["valid/uar"] = [0.4, 0.5, 0.45][e]
        h.clapkit_epoch_end(run=run, task=0, stage="prompt", epoch=e, metrics=m)
    h.clapkit_task_end(run=run, task=0, metrics={"acc_seen": 0.5, "acc_task/0": 0.5,
                                                  "valid/confusion": [[1, 0, 0]] * 3})
    out = capsys.readouterr().out.splitlines()
    idx = _confusions(out)
    assert [out[i] for i in idx] == [
        "valid confusion matrix (new best valid UAR; rows = true, columns = predicted):"] * 2 \
        + ["valid confusion matrix (end of task 0; rows = true, columns = predicted):"]
    assert "epoch 2/2" in out[idx[1] - 1]           # the second best was epoch 2, not 3
    every = build(registries, "console", confusion_every_epoch=True)
    drive(every, make_run(tmp_path))
    assert len(_confusions(capsys.readouterr().out.splitlines())) == 5


def test_console_single_task_run_has_no_task_wording(registries, tmp_path, capsys):
    run = make_run(tmp_path)
    run.num_tasks = 1
    host = PluginHost()
    host.register_listener(build(registries, "console"))
    h = host.hook
    h.clapkit_run_start(run=run)
    h.clapkit_task_start(run=run, task=0, classes=[0, 1, 2])
    h.clapkit_stage_start(run=run, task=0, stage="prompt", trainable=["prompt.ctx"])
    h.clapkit_epoch_end(run=run, task=0, stage="prompt", epoch=0, metrics=epoch_metrics(0))
    h.clapkit_stage_end(run=run, task=0, stage="prompt")
    h.clapkit_task_end(run=run, task=0, metrics={
        "acc_seen": 0.5, "acc_task/0": 0.5, "valid/war": 0.5, "valid/uar": 0.45,
        "test/war": 0.4, "test/uar": 0.35, "valid/confusion": [[1, 0, 0]] * 3})
    h.clapkit_run_end(run=run, summary={"final/valid_uar": 0.45, "final/valid_war": 0.5,
                                        "final/test_uar": 0.3, "final/test_war": 0.35,
                                        "final/checkpoint": "best"})
    out = capsys.readouterr().out
    assert out.splitlines()[-2:] == ["final test WAR 35.0 UAR 30.0 (weights of best.pt)",
                                     "final valid UAR 45.0 | WAR 50.0 (weights of best.pt)"]
    assert not re.search(r"\btasks?\b", out), out
    assert "[stage prompt | epoch 1/2]" in out and "--- stage prompt done ---" in out
    assert ("=== end of training (model of the last epoch): valid WAR 50.0 UAR 45.0 | test "
            "WAR 40.0 UAR 35.0 ===") in out
    assert "happiness" in out and "accuracy matrix" not in out


def test_console_options_and_other_ranks(registries, tmp_path, capsys):
    drive(build(registries, "console", confusion=False, checkpoints=True), make_run(tmp_path))
    out = capsys.readouterr().out
    assert "true\\pred" not in out and "checkpoint saved:" in out
    drive(build(registries, "console"), make_run(tmp_path, rank=1))
    assert capsys.readouterr().out == ""


# --- jsonl / csv -------------------------------------------------------------------------------

def test_jsonl_events_and_csv(registries, tmp_path):
    run = make_run(tmp_path)
    drive(build(registries, "jsonl", csv=True), run)
    records = [json.loads(line) for line in
               (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events[:3] == ["run_start", "task_start", "stage_start"]
    assert events.count("epoch_end") == 5 and events[-1] == "run_end"
    assert events.count("checkpoint_saved") == 5
    first = next(r for r in records if r["event"] == "epoch_end")
    assert (first["task"], first["stage"], first["epoch"]) == (0, "prompt", 0)
    assert first["metrics"]["valid/confusion"][2] == [0, 3, 100]
    assert first["metrics"]["loss/total"] == pytest.approx(1.234)
    task1 = [r for r in records if r["event"] == "task_end"][1]
    assert task1["metrics"]["acc_task/1"] == 0.5
    assert records[-1]["metrics"]["final/valid_uar"] == 0.551

    with open(run.out_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    assert list(rows[0])[:3] == ["task", "stage", "epoch"]
    assert "loss/dc" in rows[0] and rows[0]["loss/dc"] == ""      # column added by stage "all"
    assert float(rows[2]["loss/dc"]) == pytest.approx(0.05)
    assert "valid/confusion" not in rows[0] and "select_split" not in rows[0]
    assert float(rows[1]["valid/war"]) == pytest.approx(0.513)
    assert not list(run.out_dir.glob(".*tmp"))


def test_jsonl_strict_json_appends_and_rank(registries, tmp_path):
    import torch

    run = make_run(tmp_path)
    lg = build(registries, "jsonl")
    host = PluginHost()
    host.register_listener(lg)
    host.hook.clapkit_task_end(run=run, task=0, metrics={"acc_seen": math.nan,
                                                          "t": torch.tensor([1.5, 2.0])})
    host.hook.clapkit_run_end(run=run, summary={"x": 1.0})
    drive(build(registries, "jsonl"), run)                          # a resumed run appends
    lines = (run.out_dir / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["metrics"] == {"acc_seen": None, "t": [1.5, 2.0]}
    assert len(lines) > 20 and not (run.out_dir / "metrics.csv").exists()
    other = make_run(tmp_path / "r1", rank=1)
    drive(build(registries, "jsonl", csv=True), other)
    assert not other.out_dir.exists()


# --- tensorboard -------------------------------------------------------------------------------

def test_tensorboard_missing_package_error(registries, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ClapkitError, match=re.escape("pip install 'clapkit[tensorboard]'")):
        build(registries, "tensorboard")


def test_tensorboard_writes_scalars(registries, tmp_path):
    import tensorboard  # noqa: F401  (in the dev extra, so this test always runs)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = make_run(tmp_path)
    drive(build(registries, "tensorboard"), run)
    acc = EventAccumulator(str(run.out_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"valid/war", "loss/ce", "loss/dc", "lr/prompt", "task/acc_seen",
            "summary/final/valid_uar"} <= tags
    war = acc.Scalars("valid/war")
    assert [e.step for e in war] == [0, 1, 2, 3, 4]
    assert [e.value for e in war] == pytest.approx([0.503, 0.513, 0.503, 0.503, 0.513])
    assert [e.value for e in acc.Scalars("task/acc_seen")] == pytest.approx([0.8, 0.62])
    # a resumed run: steps follow the engine's run.global_epoch
    resumed = make_run(tmp_path / "resumed")
    resumed.global_epoch = 7
    lg = build(registries, "tensorboard")
    host = PluginHost()
    host.register_listener(lg)
    host.hook.clapkit_epoch_end(run=resumed, task=1, stage="prompt", epoch=1,
                                metrics=epoch_metrics(1))
    host.hook.clapkit_run_end(run=resumed, summary={})
    acc = EventAccumulator(str(resumed.out_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("valid/war")] == [7]
    other = make_run(tmp_path / "r1", rank=1)
    drive(build(registries, "tensorboard"), other)
    assert not other.out_dir.exists()


# --- plots ---------------------------------------------------------------------------------------

def test_plots_files(registries, tmp_path):
    run = make_run(tmp_path)
    drive(build(registries, "plots", dpi=50), run)
    plots = run.out_dir / "plots"
    names = sorted(p.name for p in plots.iterdir())
    # every epoch of the drive has valid UAR 0.487: the first epoch of each task is its best
    expected = {"confusion_best_t0.png", "confusion_best_t1.png", "accuracy_matrix.png",
                "learning_curves.png", "history.jsonl"}
    assert set(names) == expected                        # no temp files left behind
    with Image.open(plots / "confusion_best_t0.png") as im:
        assert im.format == "PNG" and im.mode == "RGBA" and im.size == (250, 200)
    with Image.open(plots / "learning_curves.png") as im:
        assert im.format == "PNG" and im.size == (450, 350)
    with Image.open(plots / "accuracy_matrix.png") as im:
        assert im.format == "PNG" and im.size == (225, 175)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20  # really drawn
    assert len((plots / "history.jsonl").read_text().splitlines()) == 5


@pytest.fixture
def figures(monkeypatch):
    """Capture the matplotlib figures instead of writing PNGs."""
    import clapkit.plotting as plotting
    got: dict[str, object] = {}

    def keep(fig, path, dpi=100):
        got[Path(path).name] = fig
        return Path(path)

    monkeypatch.setattr(plotting, "save_figure_atomic", keep)
    return got


def _one_task_run(registries, tmp_path, uars, **options):
    run = make_run(tmp_path)
    run.num_tasks = 1
    host = PluginHost()
    host.register_listener(build(registries, "plots", **options))
    h = host.hook
    h.clapkit_run_start(run=run)
    for e, u in enumerate(uars):
        m = epoch_metrics(e)
        m["valid/uar"] = u
        h.clapkit_epoch_end(run=run, task=0, stage="prompt" if e < 2 else "all", epoch=e,
                            metrics=m)
    h.clapkit_task_end(run=run, task=0, metrics={"acc_seen": 0.5, "acc_task/0": 0.5,
                                                  "valid/confusion": [[1, 0, 0]] * 3})
    h.clapkit_run_end(run=run, summary=SUMMARY)
    return run


def test_plots_single_task_best_and_final_confusion_no_accuracy_matrix(registries, tmp_path,
                                                                         figures):
    run = _one_task_run(registries, tmp_path, [0.4, 0.5, 0.45])
    assert set(figures) == {"confusion_best.png", "confusion_final.png",
                            "learning_curves.png"}
    assert not (run.out_dir / "accuracy_matrix.json").exists()
    best = figures["confusion_best.png"].axes[0].get_title()
    assert "best valid UAR (50.0%)" in best and "epoch 2" in best and "task" not in best


def test_confusion_colour_bar_is_labelled(figures, tmp_path):
    from clapkit.plotting import plot_confusion
    plot_confusion([[3, 1], [0, 4]], ["a long class name", "b"], tmp_path / "c.png")
    fig = figures["c.png"]
    ax, bar = fig.axes
    assert "recall" in bar.get_ylabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a long class name", "b"]
    plot_confusion([[3, 1], [0, 4]], None, tmp_path / "n.png", normalize=False)
    assert figures["n.png"].axes[1].get_ylabel() == "number of items"


def test_learning_curves_title_stages_loss_and_whole_history_after_resume(registries,
                                                                           tmp_path, figures):
    run = make_run(tmp_path)
    run.num_tasks = 1
    run.out_dir.mkdir(parents=True)
    # the first process logged three epochs before it was interrupted
    with open(run.out_dir / "metrics.jsonl", "w") as fh:
        fh.write(json.dumps({"event": "run_start"}) + "\n")
        for e in range(2):
            fh.write(json.dumps({"event": "epoch_end", "task": 0, "stage": "prompt",
                                 "epoch": e, "metrics": epoch_metrics(e)}) + "\n")
        fh.write(json.dumps({"event": "epoch_end", "task": 0, "stage": "all", "epoch": 0,
                             "metrics": epoch_metrics(0)}) + "\n")
    host = PluginHost()
    host.register_listener(build(registries, "plots"))
    h = host.hook
    h.clapkit_run_start(run=run)
    # the resumed process repeats all/epoch 0 (its checkpoint was not written), then 1
    for e in range(2):
        h.clapkit_epoch_end(run=run, task=0, stage="all", epoch=e, metrics=epoch_metrics(e))
    h.clapkit_stage_end(run=run, task=0, stage="all")
    fig = figures["learning_curves.png"]
    acc, loss = fig.axes[:2]
    assert fig._suptitle.get_text().startswith("demo:")
    assert len(acc.get_lines()[0].get_xdata()) == 4          # 2 + 2 epochs, not 2
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert legend == ["stage prompt", "stage all"]           # stages: bands + legend
    assert any(ln.get_label() == "loss/total" for ln in loss.get_lines())
    assert any(ln.get_label() == "loss/mi" for ln in loss.get_lines())
    assert not (run.out_dir / "plots" / "history.jsonl").exists()   # jsonl logger has it


def test_plots_every_and_rank(registries, tmp_path):
    run = make_run(tmp_path)
    lg = build(registries, "plots", every=2, per_epoch=True, dpi=40)
    host = PluginHost()
    host.register_listener(lg)
    host.hook.clapkit_epoch_end(run=run, task=0, stage="a b", epoch=0, metrics=epoch_metrics(0))
    host.hook.clapkit_epoch_end(run=run, task=0, stage="a b", epoch=1, metrics=epoch_metrics(1))
    pngs = sorted(p.name for p in (run.out_dir / "plots").glob("*.png"))
    assert pngs == ["confusion_best_t0.png", "confusion_t0_a_b_e1.png"]
    other = make_run(tmp_path / "r1", rank=1)
    drive(build(registries, "plots"), other)
    assert not other.out_dir.exists()


def test_final_confusion_is_the_model_the_summary_reports(registries, tmp_path, figures):
    """At run end confusion_final.png is redrawn from final/valid_confusion (best.pt when
    the run selected), not left at the last epoch's matrix."""
    run = make_run(tmp_path)
    run.num_tasks = 1
    host = PluginHost()
    host.register_listener(build(registries, "plots"))
    h = host.hook
    h.clapkit_run_start(run=run)
    h.clapkit_task_end(run=run, task=0, metrics={"valid/confusion": [[1, 0, 0]] * 3})
    assert "end of training" in figures["confusion_final.png"].axes[0].get_title()
    h.clapkit_run_end(run=run, summary={**SUMMARY, "final/checkpoint": "best",
                                        "final/valid_confusion": [[1, 0, 0], [0, 1, 0],
                                                                  [0, 0, 1]]})
    assert "final model (best.pt)" in figures["confusion_final.png"].axes[0].get_title()


def test_console_says_that_a_run_resumed(registries, tmp_path, capsys):
    run = make_run(tmp_path)
    host = PluginHost()
    host.register_listener(build(registries, "console"))
    host.hook.clapkit_run_start(run=run)
    assert "resumed" not in capsys.readouterr().out
    run.resumed_from = {"task": 2, "stage": 0, "epoch": 1, "phase": "epoch"}
    host.hook.clapkit_run_start(run=run)
    out = capsys.readouterr().out
    assert "resumed from checkpoints/last.pt (task 2, stage 0, epoch 1, phase epoch)" in out


def test_console_notes_what_train_accuracy_means_under_mixup(registries, tmp_path, capsys):
    run = make_run(tmp_path)
    host = PluginHost()
    host.register_listener(build(registries, "console"))
    host.hook.clapkit_run_start(run=run)
    assert "mixup" not in capsys.readouterr().out
    run.recipe.run.mixup_alpha = 0.2
    host.hook.clapkit_run_start(run=run)
    assert "run.mixup_alpha = 0.2: train WAR/UAR score each mixed image" in \
        capsys.readouterr().out
