"""`lasp` loss: CLAP4CLIP's language-aware prior term (after LASP; seed 000 section 5).

For the classes k of one term: with
``P[k]`` the mean over hand-crafted templates of the L2-normalised text features of class k
and ``N[k]`` the mean over Monte-Carlo samples of the adapter's noise samples (``eps``),
``sims = P N^T`` and ``L = beta * CE(sims, diag)``: each class's samples must point at its
own language prior rather than another class's. ``scope``: ``"per_task"`` (default, the
reference's: one CE per task whose adapter pair trains -- the current task while a task is
learnt, every seen task separately in class-balanced finetuning -- summed), ``"current"``,
or ``"seen"`` (one CE over all seen classes). ``template_set`` = "cifar18" / "imagenet80"
gives the reference's dataset lists. (The reference averages ``P_p . eps_s``
over templates p and samples s; that is the same bilinear quantity.) Reference beta = 15.
The template features are computed once at build with the frozen text encoder. (With the
hierarchy the reference adds the same term on the global adapter's samples; this loss reads
the task-level noise only.)
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext, Loss
from clapkit.text_prompts import (TemplateChoice, check_templates, template_features,
                                  template_set_ok)

from ._variational_outputs import SCOPES, class_groups, need_aux

DEFAULT_TEMPLATES = ["a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
                     "a photo of the small {}.", "a rendering of a {}.", "itap of a {}."]


def _check_templates(inst, attr, value: list[str]) -> None:
    check_templates(value)



@attrs.frozen
class LaspConfig(TemplateChoice):
    """``adapter``: the variational adapter; ``beta``: weight (reference 15);
    ``scope``: "per_task" | "current" | "seen"; ``templates`` of the language prior, or
    ``template_set`` (a shipped list name or a file) instead."""

    adapter: str = "variational"
    beta: float = attrs.field(default=15.0, validator=attrs.validators.ge(0))
    scope: Literal["per_task", "current", "seen"] = attrs.field(
        default="per_task", validator=attrs.validators.in_(SCOPES))
    templates: list[str] = attrs.field(factory=lambda: list(DEFAULT_TEMPLATES),
                                       validator=_check_templates)
    template_set: str = attrs.field(default="", validator=template_set_ok)


def lasp_value(prior: torch.Tensor, noise_mean: torch.Tensor) -> torch.Tensor:
    """``CE(prior @ noise_mean^T, arange)`` for row-aligned ``[k,D]`` tensors."""
    sims = prior @ noise_mean.t()
    return F.cross_entropy(sims, torch.arange(sims.shape[0], device=sims.device))


class Lasp(Loss):
    """Language-aware prior: class samples must match their own template prior."""

    def __init__(self, cfg: LaspConfig, prior: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.needs = (f"aux.{cfg.adapter}.noise_mean",)
        self.register_buffer("prior", prior, persistent=False)          # [C,D]

    def forward(self, outputs, batch) -> torch.Tensor:
        nm = need_aux(outputs, self.cfg.adapter, "noise_mean", "lasp")   # [n,D]
        n = nm.shape[0]
        if n > self.prior.shape[0]:
            raise ClapkitError(f"loss 'lasp': {n} classes in the samples but the language "
                               f"prior knows {self.prior.shape[0]}")
        prior = self.prior[:n].to(nm)
        groups = class_groups(outputs, self.cfg.adapter, batch, n, self.cfg.scope, nm.device,
                              "lasp")
        return self.cfg.beta * sum(lasp_value(prior[keep], nm[keep]) for keep in groups)


def template_prior(ctx: BuildContext, templates: list[str]) -> torch.Tensor:
    """``[C,D]``: per class, the mean of its L2-normalised template text features."""
    return template_features(ctx, templates, "lasp").mean(1)


def build(cfg: LaspConfig, ctx: BuildContext) -> Lasp:
    """Language-aware prior loss on the variational adapter's samples (beta 15)."""
    return Lasp(cfg, template_prior(ctx, cfg.template_list()))


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "lasp", build, config=LaspConfig)
