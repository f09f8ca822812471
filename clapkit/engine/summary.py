"""The run summary (``summary.json``): final figures at the selected checkpoint.

``final/valid_*`` and ``final/test_*`` are computed with the weights of ``best.pt`` (the
best valid UAR of the last task) -- the model ``clapkit eval RUN_DIR`` evaluates -- and
``best/*`` are the figures of that same epoch. Incremental runs add the accuracy-matrix
summary (computed after every task with the end-of-task weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json
from . import checkpoint as ckpt
from .distributed import barrier
from .resume import best_path


def load_selected(tr: Any, task: int) -> str:
    """Load ``best.pt`` into the model when it belongs to ``task``; returns which weights
    the model now has ("best" or "last")."""
    barrier(tr.info)
    path = best_path(tr.out)
    if not path.is_file():
        return "last"
    st = ckpt.load(path)
    if st["position"]["task"] != task:
        return "last"
    ckpt.load_model_state(tr.pipeline, st["model"], where=str(path))
    return "best"


def final_metrics(tr: Any) -> dict[str, Any]:
    """Valid (and test) WAR/UAR of the selected checkpoint on every seen class."""
    task = tr.scenario.num_tasks - 1
    which = load_selected(tr, task)
    cached = tr.use_cache_for_eval()
    va = tr.evaluate_split(tr.data.valid_split, task, cached, "valid (selected)")
    out: dict[str, Any] = {"final/checkpoint": which, "final/valid_war": va["war"],
                           "final/valid_uar": va["uar"], "final/valid_confusion": va["confusion"]}
    if tr.data.test_split:
        te = tr.evaluate_split(tr.data.test_split, task, cached, "test (selected)")
        out.update({"final/test_war": te["war"], "final/test_uar": te["uar"],
                    "final/test_confusion": te["confusion"]})
    return out


def build_summary(tr: Any, final: dict[str, Any], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = dict(final)
    out.update({"select_split": tr.data.valid_split, "num_tasks": tr.scenario.num_tasks,
                "epochs": tr.state.global_epoch, "wall_time_s": seconds,
                "out_dir": str(tr.out), "threads": torch.get_num_threads()})
    out.update(tr.best.metrics())
    if tr.scenario.incremental:
        out.update(tr.acc.summary())
        out["accuracy_matrix"] = tr.acc.to_dict()["rows"]
    return out


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(out_dir / "summary.json", summary)
