"""Stand-ins for the engine safety tests (loaded by recipes as ``plugins = [...]`` next to
``engine_standins``): a loss that turns NaN (or gives NaN gradients) at a chosen step, a CE
with a trainable temperature (a loss parameter DDP must keep in sync), and a hook that dumps
each rank's loss parameters at the end of a run."""

from __future__ import annotations

import os
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Loss


@attrs.frozen
class PoisonConfig:
    at_step: int = 3                      # the first poisoned call (1-based, training only)
    mode: Literal["loss", "grad"] = "loss"


class Poison(Loss):
    """CE, until its ``at_step``-th training call: then a NaN loss (``loss``) or a finite
    loss whose gradient is NaN (``grad``: sqrt at 0 on the text features)."""

    needs = ("logits", "text")

    def __init__(self, cfg: PoisonConfig) -> None:
        super().__init__()
        self.cfg, self.calls = cfg, 0

    def forward(self, outputs, batch):
        ce = F.cross_entropy(outputs["logits"].float(), batch["label"])
        if not (self.training and torch.is_grad_enabled()):
            return ce
        self.calls += 1
        if self.calls < self.cfg.at_step:
            return ce
        if self.cfg.mode == "loss":
            return ce * float("nan")
        text = outputs["text"].float()
        return ce + (text - text.detach()).pow(2).sum().sqrt()


class TempCE(Loss):
    """CE of logits times a learnable ``exp(log_t)``: the loss's own trainable parameter."""

    needs = ("logits",)

    def __init__(self) -> None:
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, outputs, batch):
        return F.cross_entropy(outputs["logits"].float() * self.log_t.exp(), batch["label"])


@attrs.frozen
class NoCfg:
    pass


@hookimpl
def clapkit_run_end(run, summary):
    """With ``CLAPKIT_TEST_DUMP`` set: every rank saves its loss parameters and buffers."""
    folder = os.environ.get("CLAPKIT_TEST_DUMP")
    if folder and run.model is not None:
        state = {k: v.detach().clone() for k, v in run.model.state_dict().items()
                 if k.startswith("losses.")}
        torch.save(state, os.path.join(folder, f"rank{run.rank}.pt"))


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "t_poison", lambda cfg, ctx: Poison(cfg), config=PoisonConfig)
    registrar.add("loss", "t_temp_ce", lambda cfg, ctx: TempCE(), config=NoCfg)


def ddp_worker(rank: int, world_size: int, port: int, path: str, overrides: list[str],
               out_dir: str, dump: str) -> None:
    """The engine stand-ins' DDP rank, with ``CLAPKIT_TEST_DUMP`` set (the dump folder the
    loss stand-ins write their per-rank state to)."""
    from engine_standins import ddp_worker as run_rank
    run_rank(rank, world_size, port, path, overrides, out_dir,
             extra_env={"CLAPKIT_TEST_DUMP": dump})
