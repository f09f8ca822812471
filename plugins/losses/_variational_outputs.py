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


SCOPES = ("current", "seen", "per_task")


def class_groups(outputs: dict[str, Any], adapter: str, batch: dict[str, Any], n: int,
                 scope: str, device: torch.device, loss: str) -> list[torch.Tensor]:
    """Bool ``[n]`` masks over the seen classes, one per term of the loss.

    ``"current"`` / ``"seen"``: one mask (:func:`step_classes`). ``"per_task"``: one mask per
    seen task whose adapter pair trains in this stage (``aux.<adapter>.trainable_tasks``) --
    the reference's scope: the current task while a task is learnt (old pairs frozen), every
    seen task, each its own term, in class-balanced finetuning (all pairs train). Without
    that output, or when no pair trains, the current task."""
    if scope != "per_task":
        return [step_classes(batch, n, scope, device)]
    step = batch.get("step")
    if step is None or step.task_of_class is None:
        return [torch.ones(n, dtype=torch.bool, device=device)]
    toc = step.task_of_class[:n].to(device)
    trains = aux_of(outputs, adapter, "trainable_tasks", loss)
    tasks = ([t for t in range(int(trains.numel())) if bool(trains[t])]
             if trains is not None else [])
    groups = [toc == t for t in tasks if bool((toc == t).any())]
    return groups or [step_classes(batch, n, "current", device)]
