"""What the run's checkpoints hold and how a run comes back from ``last.pt``.

``last.pt`` is written after every epoch and at the end of every task: model (the frozen
backbone left out), optimizer, scheduler, scaler, RNG states, position, replay memory,
accuracy matrix and the selected epoch's figures. ``best.pt`` holds the model at the best
valid UAR of the current task. A resume first replays the components' growth
(``on_task_start(0..t)``) so the state dict of a grown model loads strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ClapkitError
from ..metrics import AccuracyMatrix
from . import checkpoint as ckpt

#: recipe keys that may change between a run and its resume
RESUME_FREE = {("run", "progress"), ("run", "out_dir"), ("run", "device"), ("run", "threads"),
               ("log",),
               ("data", "num_workers"), ("data", "eval_batch_size"), ("cache", "dir"),
               ("cache", "batch_size"), ("cache", "enabled")}


def _flat(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, ignoring the keys a resume may change."""
    a, b = _flat(old), _flat(new)

    def free(k: tuple[str, ...]) -> bool:
        return any(k[:len(f)] == f for f in RESUME_FREE)

    return sorted(".".join(k) for k in set(a) | set(b) if not free(k) and a.get(k) != b.get(k))


def last_path(out: Path) -> Path:
    return out / "checkpoints" / "last.pt"


def read_last(out: Path, recipe_dict: dict[str, Any]) -> dict[str, Any]:
    """``last.pt`` of the run in ``out``, checked against the recipe being resumed."""
    path = last_path(out)
    if not path.is_file():
        raise ClapkitError(f"--resume: no checkpoint at {path} (run without --resume to "
                           "start afresh)")
    st = ckpt.load(path)
    diff = recipe_differences(st["recipe"], recipe_dict)
    if diff:
        raise ClapkitError(f"--resume: the recipe differs from the one {path} was written "
                           f"with at {', '.join(diff[:5])}; resume with the same recipe "
                           "or start a new run in another --out folder")
    return st


def restore(tr: Any, st: dict[str, Any]) -> None:
    """Put the trainer back where ``st`` was written: replay growth, then load the model
    (strictly) and the progress."""
    pos = st["position"]
    tr.backbone_trained = bool(st["backbone_trained"])
    for task in range(pos["task"] + 1):
        tr.start_components(task)
    ckpt.load_model_state(tr.pipeline, st["model"], where=str(last_path(tr.out)))
    tr.memory = list(st["memory"])
    tr.task_memory = list(st.get("task_memory", st["memory"]))
    tr.acc = AccuracyMatrix.from_dict(st["accuracy_matrix"])
    tr.best.values = dict(st["best"])
    tr.last_task_metrics = dict(st["last_task_metrics"])
    tr.state.global_epoch = int(st["global_epoch"])


def save_last(tr: Any, position: dict[str, Any], optimizer: Any, scheduler: Any,
              scaler: Any) -> None:
    """``last.pt`` (rank 0 only), then the ``checkpoint_saved`` event."""
    if not tr.info.is_main:
        return
    state = {"format": ckpt.FORMAT, "recipe": tr.recipe.to_dict(),
             "position": position, "global_epoch": tr.state.global_epoch,
             "model": tr.model_state(), "backbone_trained": tr.backbone_trained,
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng": ckpt.rng_state(), "best": dict(tr.best.values),
             "accuracy_matrix": tr.acc.to_dict(), "memory": list(tr.memory),
             "task_memory": list(tr.task_memory),
             "last_task_metrics": tr.last_task_metrics,
             "class_order": list(tr.scenario.order)}
    path = ckpt.atomic_save(state, last_path(tr.out))
    tr.events.fire("clapkit_checkpoint_saved", path=str(path))


def best_path(out: Path) -> Path:
    return out / "checkpoints" / "best.pt"


def save_best(tr: Any, task: int, s_idx: int, epoch: int, metrics: dict[str, Any]) -> None:
    """``best.pt``: the model of the selected epoch (rank 0 only)."""
    if not tr.info.is_main:
        return
    state = {"format": ckpt.FORMAT, "recipe": tr.recipe.to_dict(),
             "position": {"task": task, "stage": s_idx, "epoch": epoch},
             "model": tr.model_state(), "backbone_trained": tr.backbone_trained,
             "metrics": {k: v for k, v in metrics.items() if k != "valid/confusion"},
             "class_order": list(tr.scenario.order)}
    path = ckpt.atomic_save(state, best_path(tr.out))
    tr.events.fire("clapkit_checkpoint_saved", path=str(path))
