"""`anchor` router: CLAP4CLIP's anchor routing (``use_anchor_routing``, seed 000 section 6).

Each task keeps an anchor: the L2-normalised mean image embedding ``z`` of its training
items, exemplars included (``TaskView.z``), filled in ``on_task_end``; the anchor row is
created in ``on_task_start``. For a batch, task weights are
``softmax(cos(z_b, anchor_t) / temperature)`` averaged over the batch, and the
``num_samples`` Monte-Carlo samples are shared out by weight (largest remainder, so they sum
to ``num_samples``). A task whose anchor is not filled yet (the task being learned) counts
as maximally similar (cos = 1). Labels are never read, so it works at test time; at train
time every task in ``step.tasks_present`` gets at least one sample, and the allocation is
never all zeros. Tasks past the seen ones get 0.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, Router, StepContext, TaskView


@attrs.frozen
class AnchorRouterConfig:
    """``temperature`` of the softmax over task cosines (reference: 2)."""

    temperature: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))


def share_out(weights: torch.Tensor, total: int) -> torch.Tensor:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder)."""
    raw = weights / weights.sum().clamp_min(1e-12) * total
    base = raw.floor().long()
    left = total - int(base.sum())
    if left > 0:
        order = torch.argsort(raw - base, descending=True, stable=True)
        base[order[:left]] += 1
    return base


class AnchorRouter(Router):
    """Samples per task by image-to-anchor similarity."""

    def __init__(self, dim: int, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.register_buffer("anchors", torch.zeros(1, dim))
        self.register_buffer("filled", torch.zeros(1, dtype=torch.bool))

    def on_task_start(self, task: int, seen_classes: int) -> None:
        """Add (empty) anchor rows up to task ``task``."""
        n = task + 1 - self.anchors.shape[0]
        if n > 0:
            self.anchors = torch.cat([self.anchors, self.anchors.new_zeros(n, self.anchors.shape[1])])
            self.filled = torch.cat([self.filled, self.filled.new_zeros(n)])

    def on_task_end(self, task: int, view: TaskView) -> None:
        """Anchor of ``task`` = normalised mean of its training items' z."""
        with torch.no_grad():
            mean = view.z.to(self.anchors).mean(0)
            self.anchors[task] = F.normalize(mean, dim=-1)
            self.filled[task] = True

    def task_weights(self, z: torch.Tensor, n_tasks: int) -> torch.Tensor:
        """``[B, n_tasks]`` softmax(cos / temperature); unfilled anchors count as cos 1."""
        k = min(n_tasks, self.anchors.shape[0])
        cos = F.normalize(z, dim=-1) @ self.anchors[:k].t()
        cos = torch.where(self.filled[:k], cos, torch.ones_like(cos))
        return torch.softmax(cos / self.temperature, dim=-1)

    def forward(self, z: torch.Tensor, step: StepContext) -> torch.Tensor:
        toc = step.task_of_class
        n_all = int(toc.max()) + 1 if toc is not None and toc.numel() else 1
        n_seen = min(n_all, step.num_tasks_seen)
        if step.seen_classes is not None and toc is not None and step.seen_classes > 0:
            n_seen = min(n_all, int(toc[: step.seen_classes].max()) + 1)
        with torch.no_grad():
            w = self.task_weights(z.detach(), n_seen).mean(0)
        alloc = torch.zeros(n_all, dtype=torch.long, device=z.device)
        alloc[: w.shape[0]] = share_out(w, int(step.num_samples))
        if step.tasks_present is not None:
            present = torch.as_tensor(step.tasks_present, device=z.device)
            mask = (present.bool() if present.dtype == torch.bool else
                    torch.zeros(n_all, dtype=torch.bool, device=z.device)
                    .index_fill(0, present.long().flatten(), True))
            alloc = torch.where(mask[:n_all], alloc.clamp_min(1), alloc)
        if int(alloc.sum()) == 0:
            alloc[int(torch.argmax(w))] = 1
        return alloc


def build(cfg: AnchorRouterConfig, ctx: BuildContext) -> AnchorRouter:
    """Anchor routing: Monte-Carlo samples per task by similarity to task anchors."""
    return AnchorRouter(ctx.embed_dim, cfg.temperature)


@hookimpl
def clapkit_register(registrar):
    registrar.add("router", "anchor", build, config=AnchorRouterConfig)
