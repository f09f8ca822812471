"""Checkpoints: atomic writes, model/optimizer/RNG state, the run position.

A checkpoint is written after every epoch (``last.pt``) and at each new best (``best.pt``).
It holds everything a resumed run needs to reach the same final weights as an uninterrupted
one: the model state, optimizer, scheduler and grad-scaler states, the RNG states of torch
(CPU and CUDA), numpy and python, the position (task, stage, epoch), best metrics, the
accuracy matrix and the replay memory. The backbone's weights are stored only when some stage
trained them (a frozen CLIP is rebuilt from its recipe instead of copied every epoch).

Everything in it is a tensor or plain data (dicts, lists, numbers, strings), so it loads with
``torch.load(weights_only=True)``: a crafted checkpoint cannot execute code on ``--resume``.
"""

from __future__ import annotations

import io
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import ClapkitError

#: 2: RNG states as tensors and lists, loadable with ``weights_only=True``
FORMAT = 2


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically (:func:`clapkit.atomic.atomic_write`). A checkpoint whose
    model weights are not all finite is refused: NaN weights never replace a good file."""
    bad = nonfinite(obj.get("model", {})) if isinstance(obj, dict) else []
    if bad:
        raise ClapkitError(f"refusing to write {Path(path).name}: non-finite values in "
                           f"{', '.join(bad[:3])}" + (f" and {len(bad) - 3} more" if
                                                      len(bad) > 3 else ""))
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def nonfinite(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or infinity."""
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: only tensors and plain
    containers are unpickled, so a crafted file can never run code; it is refused with one
    line naming what it tried to load."""
    path = Path(path)
    if not path.is_file():
        raise ClapkitError(f"no checkpoint to resume from: {path} does not exist "
                           "(run without --resume to start afresh)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = re.search(r"GLOBAL ([\w.]+)|[Uu]nsupported operand \S+", str(exc))
        found = (what.group(1) or what.group(0)) if what else "an unknown pickle opcode"
        raise ClapkitError(f"checkpoint {path} refused: it holds Python objects other than "
                           f"tensors and plain data ({found}); "
                           "a checkpoint is never allowed to run code") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing problem
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ClapkitError(f"checkpoint {path} cannot be read: {type(exc).__name__}: "
                           f"{first}") from None
    if not isinstance(state, dict) or "format" not in state:
        raise ClapkitError(f"{path} is not a clapkit checkpoint")
    if state.get("format") != FORMAT:
        raise ClapkitError(f"{path} is a clapkit checkpoint of format {state.get('format')!r}; "
                           f"this version reads format {FORMAT} (start a new run)")
    return state


def dumps(obj: Any) -> bytes:
    """``torch.save`` into bytes (tests and in-memory round trips)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --- model state ----------------------------------------------------------------------------

def model_state(model: nn.Module, include_backbone: bool) -> dict[str, torch.Tensor]:
    """The model's state dict, without ``backbone.*`` unless it was trained."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if include_backbone or not k.startswith("backbone.")}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor] | None, *,
                     where: str = "checkpoint") -> None:
    """Load ``state`` (a checkpoint's ``model`` table; None when it has none) into
    ``model``; a checkpoint of another model (other keys, or tensors of other shapes, e.g.
    another recipe's ``best.pt``) is a one-line error."""
    if not isinstance(state, dict):
        raise ClapkitError(f"{where} is not a clapkit checkpoint (its model state is "
                           f"{type(state).__name__}, not a table of tensors)")
    own = model.state_dict()
    wrong = [k for k, v in state.items()
             if k in own and (not torch.is_tensor(v) or v.shape != own[k].shape)]
    if wrong:
        k = wrong[0]
        got = tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__
        raise ClapkitError(f"{where} does not fit this recipe's model ({len(wrong)} tensor(s) "
                           f"of another shape, e.g. {k}: {got} in the checkpoint, "
                           f"{tuple(own[k].shape)} in the model): it was saved by another "
                           "recipe")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        raise ClapkitError(f"{where} does not fit this recipe's model "
                           f"({'missing' if missing else 'unexpected'} keys: {', '.join(bad)})")


def checkpoint_task(state: dict[str, Any], num_tasks: int, where: str) -> int:
    """The task a checkpoint's weights have seen (its ``position``), checked against the
    recipe's ``num_tasks``: a checkpoint of another scenario is a one-line error, not an
    IndexError while the per-task modules are grown."""
    position = state.get("position") or {}
    task = position.get("task", 0) if isinstance(position, dict) else None
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < num_tasks:
        raise ClapkitError(f"{where} was saved at task {task!r}, but this recipe's scenario "
                           f"has tasks 0..{num_tasks - 1}: it belongs to another recipe")
    return task


# --- RNG (tensors, ints and lists only: weights_only-loadable) ----------------------------

def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": [int(x) for x in py_state],
                   "gauss": py_gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
