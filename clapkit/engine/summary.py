"""The run summary (``summary.json``) and the engine's ``accuracy_matrix.json``.

``final/valid_*`` and ``final/test_*`` are computed with the selected weights: ``best.pt``
when ``run.select`` selects (by default only in single-task runs), else the model at the end
of the last task (``last.pt``); ``best/*`` are the figures of the selected epoch.
Incremental runs add the accuracy-matrix summary (last / average incremental accuracy,
forgetting, BWT, task-aware accuracy, ECE, the novel-class detection figures as means over
tasks), always computed with the end-of-task weights. ``figures`` says which model each
group of figures comes from, ``eval_noise`` how Monte-Carlo evaluation was seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json
from . import checkpoint as ckpt
from .distributed import barrier
from .resume import best_path
from .task_eval import PLUGIN_METRICS


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


def backbone_label(recipe: Any) -> str:
    """``"ViT-B-16 (openai)"``, ``"clapkit-tiny (random init)"``: what a results table shows."""
    cfg = recipe.backbone.config
    model = getattr(cfg, "model", None) or recipe.backbone.plugin
    tag = getattr(cfg, "pretrained", None)
    return f"{model} ({tag})" if tag else f"{model} (random init)"


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
    r = tr.recipe
    selects = tr.best.criterion
    out.update({"select_split": tr.data.valid_split, "num_tasks": tr.scenario.num_tasks,
                "epochs": tr.state.global_epoch, "wall_time_s": seconds,
                "out_dir": str(tr.out), "threads": torch.get_num_threads(),
                "selection": selects or "none (the model at the end of each task)",
                "seed": r.run.seed, "backbone": backbone_label(r),
                "eval_noise": {"num_samples": r.run.num_samples, "seed": r.run.seed,
                               "how": "Monte-Carlo noise from a generator seeded afresh "
                                      "for every evaluation"}})
    figures = {"final/*": ("best.pt (selected on " f"'{selects}' of split "
                           f"'{tr.data.valid_split}')" if final.get("final/checkpoint") == "best"
                           else "last.pt (the model at the end of the last task)")}
    if selects:
        figures["best/*"] = f"the epoch of the last task with the best '{selects}'"
    if r.memory.size > 0:
        out["memory_size"] = r.memory.size
    out.update(tr.best.metrics())
    last = getattr(tr, "last_task_metrics", None) or {}
    hooked = [k for k in last.get(PLUGIN_METRICS, []) if k in last and k not in out]
    if hooked:                       # retrieval, captioning, ...: the evaluation plugins'
        out.update({k: last[k] for k in hooked})
        figures[", ".join(hooked)] = ("the model at the end of the last task (the recipe's "
                                      "evaluation plugins)")
    if tr.scenario.incremental:
        out.update(tr.acc.summary())
        out["accuracy_matrix"] = tr.acc.to_dict()["rows"]
        figures["last_acc, avg_incremental_acc, forgetting, bwt, task-aware, ece, ood/*"] = (
            f"the model at the end of each task, on split '{tr.data.report_split}'")
    out["figures"] = figures
    return out


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(out_dir / "summary.json", summary)


def read_summary(out_dir: Path) -> dict[str, Any] | None:
    """A finished run's ``summary.json`` (None when the run has not finished)."""
    import json
    try:
        return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_accuracy_matrix(tr: Any) -> None:
    """``accuracy_matrix.json`` (rank 0, incremental runs): R[t][j], the per-task scalars
    and detection tables, and their summary -- whatever loggers the recipe has."""
    if not tr.info.is_main or not tr.scenario.incremental:
        return
    data: dict[str, Any] = tr.acc.to_dict()
    data["ood"] = {str(t): table for t, table in enumerate(data["ood"]) if table}
    data["split"] = tr.data.report_split
    data["classes_per_task"] = [len(tr.scenario.classes_of(t))
                                for t in range(tr.scenario.num_tasks)]
    data["summary"] = tr.acc.summary()
    atomic_write_json(tr.out / "accuracy_matrix.json", data)
