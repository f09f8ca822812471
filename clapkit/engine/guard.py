"""Stop a run the moment its numbers stop being numbers.

A non-finite loss (or, without a gradient scaler, a non-finite gradient norm) stops training
with one line naming where it happened and every loss term's value. Nothing is written after
it: ``last.pt`` and ``best.pt`` keep the last good epoch, and
:func:`clapkit.engine.checkpoint.atomic_save` refuses non-finite weights in any case. With
AMP's gradient scaler, infinite gradients are expected now and then (the scaler skips that
step and lowers its scale), so only the loss is checked there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ClapkitError


class NonFiniteError(ClapkitError):
    """Training produced NaN or infinity."""


def _value(v: Any) -> float:
    if torch.is_tensor(v):
        return float(v.detach().float().reshape(-1)[0]) if v.numel() else math.nan
    return float(v)


def describe_terms(terms: Mapping[str, Any]) -> str:
    """``"total=nan (ce=nan, mi=0.123)"``-style listing of the loss terms."""
    parts = []
    for k, v in terms.items():
        try:
            parts.append(f"{k}={_value(v):.4g}")
        except (TypeError, ValueError):
            parts.append(f"{k}=?")
    return ", ".join(parts)


def check_loss(total: torch.Tensor, terms: Mapping[str, Any], where: str) -> None:
    """Raise :class:`NonFiniteError` when the total loss is NaN or infinite."""
    if bool(torch.isfinite(total.detach()).all()):
        return
    raise NonFiniteError(f"training stopped: non-finite loss at {where} "
                         f"({describe_terms({'total': total, **terms})}); checkpoints keep the "
                         "last good epoch -- lower the learning rate, check the loss weights "
                         "or enable grad_clip")


def check_grad_norm(norm: float | torch.Tensor, terms: Mapping[str, Any], where: str) -> None:
    """Raise :class:`NonFiniteError` when the gradient norm is NaN or infinite."""
    value = _value(norm)
    if math.isfinite(value):
        return
    raise NonFiniteError(f"training stopped: non-finite gradient (norm {value}) at {where} "
                         f"({describe_terms(terms)}); checkpoints keep the last good epoch -- "
                         "lower the learning rate or enable grad_clip")
