"""metrics.jsonl / metrics.csv after a kill between logging an epoch and checkpointing it:
the resumed run cuts them back to the checkpoint, so each epoch is logged once; log files
are names inside the run folder (or a sub-folder of it given as ``dir``)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
from test_loggers import build, epoch_metrics, make_run, registries  # noqa: F401

from clapkit.errors import RecipeError
from clapkit.plugins import PluginHost


def _epochs(listener, run, todo):
    host = PluginHost()
    host.register_listener(listener)
    h = host.hook
    h.clapkit_run_start(run=run)
    for task, stage, epoch in todo:
        h.clapkit_epoch_end(run=run, task=task, stage=stage, epoch=epoch,
                            metrics=epoch_metrics(epoch))
        h.clapkit_checkpoint_saved(run=run, path="last.pt")
    return h


def test_resume_after_kill_between_log_and_checkpoint_logs_each_epoch_once(registries,
                                                                           tmp_path):
    run = make_run(tmp_path)
    first = build(registries, "jsonl", csv=True)
    # epochs (0,prompt,0) and (0,prompt,1) logged; the kill came before the second's checkpoint
    _epochs(first, run, [(0, "prompt", 0), (0, "prompt", 1)])
    first.close()
    with open(run.out_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"event": "epoch_end", "torn')                      # a torn last line
    resumed = SimpleNamespace(**vars(run), resumed_from={"task": 0, "stage": 0, "epoch": 0,
                                                         "phase": "epoch"})
    h = _epochs(build(registries, "jsonl", csv=True), resumed,
                [(0, "prompt", 1), (0, "all", 0)])
    h.clapkit_task_end(run=resumed, task=0, metrics={"acc_seen": 0.5})
    h.clapkit_run_end(run=resumed, summary={})
    records = [json.loads(x) for x in (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [(r["task"], r["stage"], r["epoch"]) for r in records if r["event"] == "epoch_end"]
    assert epochs == [(0, "prompt", 0), (0, "prompt", 1), (0, "all", 0)]
    with open(run.out_dir / "metrics.csv", newline="") as fh:
        rows = [(r["task"], r["stage"], r["epoch"]) for r in csv.DictReader(fh)]
    assert rows == [("0", "prompt", "0"), ("0", "prompt", "1"), ("0", "all", "0")]


def test_resume_after_task_end_keeps_it_once(registries, tmp_path):
    run = make_run(tmp_path)
    lg = build(registries, "jsonl")
    h = _epochs(lg, run, [(0, "prompt", 0)])
    h.clapkit_task_end(run=run, task=0, metrics={"acc_seen": 0.5})     # then killed
    lg.close()
    resumed = SimpleNamespace(**vars(run), resumed_from={"task": 0, "stage": 1, "epoch": 0,
                                                         "phase": "epoch"})
    h = _epochs(build(registries, "jsonl"), resumed, [])
    h.clapkit_task_end(run=resumed, task=0, metrics={"acc_seen": 0.5})
    records = [json.loads(x) for x in (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("task_end") == 1


@pytest.mark.parametrize("key,value", [("file", "../escape.jsonl"), ("file", "/tmp/x.jsonl"),
                                       ("csv_file", "a/b.csv")])
def test_log_files_are_names(registries, key, value):
    from clapkit.config import structure
    entry = registries.logger.get("jsonl")
    with pytest.raises(RecipeError, match=key):
        structure(entry.config_cls, {key: value}, file="r.toml", key="log.jsonl")


def test_dir_is_a_sub_folder_of_the_run_folder(registries, tmp_path):
    run = make_run(tmp_path)
    lg = build(registries, "jsonl", dir="logs/jsonl")
    _epochs(lg, run, [(0, "prompt", 0)])
    lg.close()
    assert (run.out_dir / "logs" / "jsonl" / "metrics.jsonl").is_file()
    assert not (run.out_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize("plugin", ["plots", "tensorboard"])
@pytest.mark.parametrize("value", ["../up", "/abs/dir", "a/../../b"])
def test_logger_subfolders_stay_inside_the_run_folder(registries, plugin, value):
    from clapkit.config import structure
    entry = registries.logger.get(plugin)
    with pytest.raises(RecipeError, match="subdir"):
        structure(entry.config_cls, {"subdir": value}, file="r.toml", key=f"log.{plugin}")
    assert structure(entry.config_cls, {"subdir": "nested/ok"}, file="r.toml",
                     key=f"log.{plugin}").subdir == "nested/ok"


def test_pngs_and_csv_are_group_readable(tmp_path):
    import os
    import stat

    from clapkit.plotting import plot_confusion
    old = os.umask(0o022)
    try:
        png = plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "c.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(png.stat().st_mode) == 0o644
