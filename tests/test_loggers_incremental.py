"""Continual-learning reports of the console and plots loggers: the accuracy matrix after
every task, task-aware accuracy / ECE, the OOD table, accuracy_matrix.json."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from clapkit.interfaces import BuildContext
from clapkit.metrics import AccuracyMatrix
from clapkit.ood import flat_ood_metrics
from clapkit.plugins import PluginHost, get_plugin_host

R = [[0.9], [0.6, 0.8], [0.7, 0.5, 0.95]]
SEEN = [0.9, 0.7, 0.72]
OOD = {0: {"energy": {"auroc": 0.81, "aupr": 0.7, "fpr95": 0.55},
           "variance": {"auroc": 0.64, "aupr": 0.6, "fpr95": 0.9}},
       1: {"energy": {"auroc": 0.77, "aupr": 0.75, "fpr95": 0.6}}}


@pytest.fixture(scope="module")
def registries():
    return get_plugin_host(autoload_third_party=False).registries


def build(registries, name: str, **options):
    entry = registries.logger.get(name)
    return entry.factory(entry.config_cls(**options), BuildContext())


def make_run(tmp_path: Path) -> SimpleNamespace:
    recipe = SimpleNamespace(run=SimpleNamespace(name="inc"), stages=[])
    return SimpleNamespace(out_dir=tmp_path / "run", recipe=recipe, rank=0,
                           class_names=[f"c{i}" for i in range(6)], num_tasks=3)


def task_metrics(t: int) -> dict:
    m = {"acc_seen": SEEN[t], "task_aware_acc": 0.95 - 0.05 * t, "ece": 0.1 * (t + 1)}
    m.update({f"acc_task/{j}": a for j, a in enumerate(R[t])})
    if t in OOD:
        m.update(flat_ood_metrics(OOD[t]))
    return m


def drive(listener, run) -> None:
    host = PluginHost()
    host.register_listener(listener)
    h = host.hook
    h.clapkit_run_start(run=run)
    for t in range(3):
        h.clapkit_task_start(run=run, task=t, classes=[2 * t, 2 * t + 1])
        h.clapkit_task_end(run=run, task=t, metrics=task_metrics(t))
    m = AccuracyMatrix()
    for t in range(3):
        m.update(t, R[t], SEEN[t], task_aware=0.95 - 0.05 * t, ece=0.1 * (t + 1))
    h.clapkit_run_end(run=run, summary=m.summary())


def test_console_prints_matrix_after_every_task_and_ood_table(registries, tmp_path, capsys):
    drive(build(registries, "console"), make_run(tmp_path))
    out = capsys.readouterr().out.splitlines()
    heads = [i for i, line in enumerate(out) if line.startswith("accuracy matrix R[t][j]")]
    assert len(heads) == 3                                   # after every task
    last = out[heads[-1] + 1: heads[-1] + 5]
    assert last[0].split() == ["after\\on", "t0", "t1", "t2", "seen"]
    assert last[3].split() == ["t2", "70.0", "50.0", "95.0", "72.0"]
    assert last[2].split() == ["t1", "60.0", "80.0", "70.0"]   # blank above the diagonal
    assert any(line == "task-aware acc 85.0 | ECE 30.0" for line in out)
    i = next(i for i, line in enumerate(out) if line.startswith("novel-class detection after "
                                                                 "task 0"))
    assert out[i + 1].split() == ["score", "AUROC", "AUPR", "FPR95"]
    assert out[i + 2].split() == ["energy", "81.0", "70.0", "55.0"]
    assert out[i + 3].split() == ["variance", "64.0", "60.0", "90.0"]
    assert not any("after task 2" in line for line in out)   # no future data, no table
    summary = next(line for line in out if line.startswith("avg incremental acc"))
    # forgetting: (0.9-0.7 + 0.8-0.5)/2 = 25; BWT: (0.7-0.9 + 0.5-0.8)/2 = -25
    assert "last acc 72.0" in summary and "forgetting 25.0" in summary
    assert "BWT -25.0" in summary and "avg task-aware acc 90.0" in summary


def test_console_prefers_the_full_matrix_when_the_engine_sends_it(registries, tmp_path,
                                                                 capsys):
    lg = build(registries, "console")
    host = PluginHost()
    host.register_listener(lg)
    run = make_run(tmp_path)
    # a resumed run: the logger never saw tasks 0 and 1
    host.hook.clapkit_task_end(run=run, task=2, metrics={**task_metrics(2),
                                                         "accuracy_matrix": R})
    out = capsys.readouterr().out.splitlines()
    i = out.index("accuracy matrix R[t][j] (%)")
    assert out[i + 2].split()[:2] == ["t0", "90.0"]


def test_plots_writes_the_heatmap_and_leaves_the_json_to_the_engine(registries, tmp_path):
    """accuracy_matrix.json is the engine's (written whatever loggers are on; see
    tests/engine/test_cl_protocol.py): the plots logger draws the heatmap only."""
    run = make_run(tmp_path)
    drive(build(registries, "plots", dpi=40), run)
    assert not (run.out_dir / "accuracy_matrix.json").exists()
    with Image.open(run.out_dir / "plots" / "accuracy_matrix.png") as im:
        assert im.format == "PNG"
    assert not [p for p in run.out_dir.rglob("*") if p.name.endswith(".tmp")]
