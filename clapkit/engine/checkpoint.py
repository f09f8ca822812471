"""Checkpoints: atomic writes, model/optimizer/RNG state, the run position.

A checkpoint is written after every epoch (``last.pt``) and at each new best (``best.pt``).
It holds everything a resumed run needs to reach the same final weights as an uninterrupted
one: the model state, optimizer, scheduler and grad-scaler states, the RNG states of torch
(CPU and CUDA), numpy and python, the position (task, stage, epoch), best metrics, the
accuracy matrix and the replay memory. The backbone's weights are stored only when some stage
trained them (a frozen CLIP is rebuilt from its recipe instead of copied every epoch).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ClapkitError

FORMAT = 1


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``: readers
    see the old file or the complete new one, never a torn write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ClapkitError(f"no checkpoint to resume from: {path} does not exist "
                           "(run without --resume to start afresh)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing problem
        raise ClapkitError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}") \
            from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ClapkitError(f"{path} is not a clapkit checkpoint (format {FORMAT})")
    return state


# --- model state ----------------------------------------------------------------------------

def model_state(model: nn.Module, include_backbone: bool) -> dict[str, torch.Tensor]:
    """The model's state dict, without ``backbone.*`` unless it was trained."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if include_backbone or not k.startswith("backbone.")}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], *,
                     where: str = "checkpoint") -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        raise ClapkitError(f"{where} does not fit this recipe's model "
                           f"({'missing' if missing else 'unexpected'} keys: {', '.join(bad)})")


# --- RNG ------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                           "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
