"""Reading the ``variational`` adapter's step outputs for the CLAP4CLIP loss terms.

Kept in one place so ``prior_kl``, ``lasp``, ``distill`` and ``ortho`` name the outputs they
need the same way and fail with the same clear message when one is missing.
"""

from __future__ import annotations

from typing import Any

import torch

from clapkit.errors import ClapkitError


def aux_of(outputs: dict[str, Any], adapter: str, key: str, loss: str) -> torch.Tensor | None:
    """``aux.<adapter>.<key>`` (pipelines publish it flat as ``"<adapter>.<key>"``, or
    nested); None when the adapter did not produce it this step."""
    aux = outputs.get("aux") or {}
    if f"{adapter}.{key}" in aux:
        return aux[f"{adapter}.{key}"]
    sub = aux.get(adapter)
    if isinstance(sub, dict):
        return sub.get(key)
    return None


def need_aux(outputs: dict[str, Any], adapter: str, key: str, loss: str) -> torch.Tensor:
    value = aux_of(outputs, adapter, key, loss)
    if value is None:
        raise ClapkitError(f"loss '{loss}': no output aux.{adapter}.{key} this step (is "
                           f"'{adapter}' a variational adapter with the needed option on?)")
    return value


def step_classes(batch: dict[str, Any], n: int, scope: str, device: torch.device
                 ) -> torch.Tensor:
    """Bool ``[n]`` over the seen classes: all of them (``scope = "seen"``) or those of the
    current task (``"current"``; all when the batch carries no step context)."""
    step = batch.get("step")
    keep = torch.ones(n, dtype=torch.bool, device=device)
    if scope == "current" and step is not None and step.task_of_class is not None:
        keep = step.task_of_class[:n].to(device) == int(step.task)
        if not bool(keep.any()):
            keep = torch.ones_like(keep)
    return keep
