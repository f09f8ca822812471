"""`distill` loss: CLAP4CLIP's distillation from the previous task's adapters (seed 000,
"Knowledge Distillation"): ``scale * MSE(mean_prev, mean_now)`` over the old classes.

The variational adapter snapshots its pairs at ``on_task_start`` of every task after the
first (``keep_previous``) and publishes, for the same input, the current means and the
snapshot's (``aux.<adapter>.mean``/``prev_mean``; with the hierarchy also
``global_mean``/``prev_global_mean``). ``target``: ``"global"`` (the reference: the global
adapter, needs the hierarchy), ``"task"`` (the task pairs of the old classes -- they differ
from the snapshot only where old pairs train, e.g. in class-balanced finetuning), ``"both"``,
or ``"auto"`` (global with the hierarchy, task without). Task 0 has no previous task: 0.
Reference scale 0.3. Both means cover the old classes only (the reference's
``mse_loss(prev_loc, qdist_g.loc[:n_old])``; a parity test rebuilds it). The previous
global adapter reads the input the previous task's VGA and task tokens give
(``distill_input = "previous"`` of the adapter, as the reference; parity-tested), so their
drift is distilled too.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext, Loss

from ._variational_outputs import aux_of


@attrs.frozen
class DistillConfig:
    """``adapter``: the variational adapter; ``target``: "auto" | "global" | "task" |
    "both"; ``scale``: reference 0.3."""

    adapter: str = "variational"
    target: Literal["auto", "global", "task", "both"] = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "global", "task", "both")))
    scale: float = attrs.field(default=0.3, validator=attrs.validators.ge(0))


def _mse_old(now: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    k = prev.shape[-2]
    now = now[..., :k, :]
    if now.shape != prev.shape:                       # prev lacks the global-sample dim
        prev = prev.expand_as(now)
    return F.mse_loss(now, prev.detach())


class Distill(Loss):
    """MSE between the adapter's means and its previous-task snapshot's."""

    def __init__(self, cfg: DistillConfig) -> None:
        super().__init__()
        self.cfg = cfg
        keys = {"auto": ("mean", "prev_mean"), "task": ("mean", "prev_mean"),
                "global": ("global_mean", "prev_global_mean"),
                "both": ("mean", "prev_mean", "global_mean", "prev_global_mean")}[cfg.target]
        self.needs = tuple(f"aux.{cfg.adapter}.{k}" for k in keys)

    def _pair(self, outputs, now_key: str, prev_key: str):
        return (aux_of(outputs, self.cfg.adapter, now_key, "distill"),
                aux_of(outputs, self.cfg.adapter, prev_key, "distill"))

    def forward(self, outputs, batch) -> torch.Tensor:
        cfg = self.cfg
        has_global = aux_of(outputs, cfg.adapter, "global_mean", "distill") is not None
        target = cfg.target if cfg.target != "auto" else ("global" if has_global else "task")
        if target in ("global", "both") and not has_global:
            raise ClapkitError(f"loss 'distill': target '{target}' needs the hierarchy "
                               f"(adapter '{cfg.adapter}' hierarchical = true)")
        terms = []
        keys = {"global": [("global_mean", "prev_global_mean")],
                "task": [("mean", "prev_mean")],
                "both": [("global_mean", "prev_global_mean"), ("mean", "prev_mean")]}[target]
        task = getattr(batch.get("step"), "task", None)
        anchor = None
        for now_key, prev_key in keys:
            now, prev = self._pair(outputs, now_key, prev_key)
            if now is None:
                raise ClapkitError(f"loss 'distill': no aux.{cfg.adapter}.{now_key}")
            anchor = now
            if prev is None:
                if task and task > 0:
                    raise ClapkitError(f"loss 'distill': task {task} but adapter "
                                       f"'{cfg.adapter}' kept no previous snapshot "
                                       f"(set keep_previous = true)")
                continue
            terms.append(_mse_old(now, prev))
        if not terms:                                   # first task: nothing to distil
            return anchor.sum() * 0.0
        return cfg.scale * torch.stack(terms).sum()


def build(cfg: DistillConfig, ctx: BuildContext) -> Distill:
    """Distillation of the variational adapter's means from the previous task (0.3)."""
    return Distill(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "distill", build, config=DistillConfig)
