"""`uniform` router: the same Monte-Carlo sample count for every task (CLAP4CLIP with
``use_anchor_routing`` off: each task's adapters draw ``forward_times`` samples).

``mode = "each"`` gives every task ``num_samples``; ``mode = "split"`` shares ``num_samples``
among the tasks (remainder to the first tasks). Either way, at train time every task in
``step.tasks_present`` gets at least one sample. It ignores z, so it works without labels.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, Router, StepContext


@attrs.frozen
class UniformRouterConfig:
    """``mode``: "each" (every task gets num_samples) or "split" (they share it)."""

    mode: Literal["each", "split"] = attrs.field(
        default="each", validator=attrs.validators.in_(("each", "split")))


class UniformRouter(Router):
    """Allocation independent of the image."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, z: torch.Tensor, step: StepContext) -> torch.Tensor:
        num_samples, tasks_present = step.num_samples, step.tasks_present
        task_of_class = (step.task_of_class if step.task_of_class is not None
                         else torch.zeros(1, dtype=torch.long))
        n_tasks = int(task_of_class.max()) + 1 if task_of_class.numel() else 1
        device = z.device
        if self.mode == "each":
            alloc = torch.full((n_tasks,), int(num_samples), dtype=torch.long, device=device)
        else:
            base, extra = divmod(int(num_samples), n_tasks)
            alloc = base + (torch.arange(n_tasks, device=device) < extra).long()
        if tasks_present is not None:
            present = torch.as_tensor(tasks_present, device=device)
            mask = (present if present.dtype == torch.bool
                    else torch.zeros(n_tasks, dtype=torch.bool, device=device)
                    .index_fill(0, present.long().flatten(), True))
            alloc = torch.where(mask, alloc.clamp_min(1), alloc)
        return alloc


def build(cfg: UniformRouterConfig, ctx: BuildContext) -> UniformRouter:
    """Uniform sample allocation over tasks (anchor routing off)."""
    return UniformRouter(cfg.mode)


@hookimpl
def clapkit_register(registrar):
    registrar.add("router", "uniform", build, config=UniformRouterConfig)
