"""A tiny class-incremental CLAP4CLIP run end to end, from the shipped demo recipe: the
accuracy matrix of every task, the novel-class detection keys, task-aware accuracy and ECE in
metrics.jsonl, last_acc in summary.json, accuracy_matrix.json and the printed tables."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from clapkit.data.demo import ensure_demo
from clapkit.engine.runner import run_recipe
from clapkit.ood import OOD_METRICS
from clapkit.plugins import get_plugin_host

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TASKS = 5


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """demo_clap4clip.toml on the tiny generated set (3 train / 1 test image per class),
    one epoch per stage, 2 MC samples: a few seconds."""
    tmp = tmp_path_factory.mktemp("clap4clip")
    host = get_plugin_host(autoload_third_party=False)
    root = ensure_demo("incremental", tmp / "data", tiny=True, host=host)
    out = tmp / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny ops: extra threads only add overhead on 2 cores
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            summary = _run(tmp, root, host, out)
    finally:
        torch.set_num_threads(threads)
    return out, summary, printed.getvalue()


def _run(tmp: Path, root: Path, host, out: Path) -> dict:
    return run_recipe(RECIPES / "demo_clap4clip.toml", host=host, out_dir=out, overrides=[
        f'data.root="{root}"', "data.batch_size=8", "run.num_samples=2",
        "run.progress=false", f'cache.dir="{tmp / "cache"}"', "memory.size=20",
        "stages.task.epochs=1", "stages.balanced_finetune.epochs=1",
        "adapters.vga.ff_dim=32"])


def test_summary_has_the_incremental_metrics(tiny_run):
    out, summary, _ = tiny_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert 0.0 <= on_disk["last_acc"] <= 1.0
    assert on_disk["last_acc"] == pytest.approx(summary["last_acc"])
    m = on_disk["accuracy_matrix"]
    assert len(m) == TASKS and [len(r) for r in m] == list(range(1, TASKS + 1))
    for key in ("avg_incremental_acc", "forgetting", "bwt", "avg_task_aware_acc",
                "last_task_aware_acc", "last_ece"):
        assert isinstance(on_disk[key], float), key
    # last_acc is the seen-class accuracy after the last task, also in metrics.jsonl
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ends = [e for e in events if e["event"] == "task_end"]
    assert [e["task"] for e in ends] == list(range(TASKS))
    assert ends[-1]["metrics"]["acc_seen"] == pytest.approx(on_disk["last_acc"])
    # BWT recomputed from the saved matrix (definition in clapkit.metrics.AccuracyMatrix)
    bwt = sum(m[-1][j] - m[j][j] for j in range(TASKS - 1)) / (TASKS - 1)
    assert on_disk["bwt"] == pytest.approx(bwt)


def test_ood_keys_in_metrics_jsonl(tiny_run):
    out, _, _ = tiny_run
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ends = {e["task"]: e["metrics"] for e in events if e["event"] == "task_end"}
    for t in range(TASKS - 1):         # future tasks exist: the table is there
        for score in ("energy", "msp", "variance", "entropy"):
            for metric in OOD_METRICS:
                v = ends[t][f"ood/{score}/{metric}"]
                assert v is None or 0.0 <= v <= 1.0, (t, score, metric, v)
        assert 0.0 <= ends[t]["task_aware_acc"] <= 1.0
        assert ends[t]["task_aware_acc"] >= ends[t]["acc_seen"] - 1e-9
        assert 0.0 <= ends[t]["ece"] <= 1.0
    assert not any(k.startswith("ood/") and k != "ood/split" for k in ends[TASKS - 1])


def test_accuracy_matrix_files_and_console_tables(tiny_run):
    out, summary, printed = tiny_run
    data = json.loads((out / "accuracy_matrix.json").read_text())
    assert data["rows"] == summary["accuracy_matrix"]
    assert data["summary"]["last_acc"] == pytest.approx(summary["last_acc"])
    assert sorted(data["ood"]) == [str(t) for t in range(TASKS - 1)]
    assert (out / "plots" / "accuracy_matrix.png").stat().st_size > 1000
    assert not math.isnan(summary["forgetting"])
    lines = printed.splitlines()
    assert sum(line == "accuracy matrix R[t][j] (%)" for line in lines) == TASKS
    assert sum(line.split()[:4] == ["score", "AUROC", "AUPR", "FPR95"]
               for line in lines) == TASKS - 1
    assert any(line.startswith("avg incremental acc") and "last acc" in line for line in lines)
