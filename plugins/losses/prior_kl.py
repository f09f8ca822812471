"""`prior_kl` loss: KL(q || p) of the variational adapter's distribution (CLAP4CLIP's prior
matching term, seed 000 section 5): ``scale * mean over classes (and batch/global-sample
dims) of the sum over feature dims of KL``. Reference scale 0.001. ``scope``: ``"per_task"`` (default,
the reference's: one such term per task whose adapter pair trains -- the current task while
a task is learnt, every seen task in class-balanced finetuning -- summed), ``"current"`` (the
current task's classes) or ``"seen"`` (one mean over all seen classes).

``prior``: ``"standard"`` p = N(0, I); ``"data"`` p = the adapter's data-driven prior from a
context subset (``aux.<adapter>.prior_loc/prior_scale``; the adapter needs
``prior = "data"``). With the hierarchy the global adapter's KL to N(0, I) is added
(``include_global``), as the reference does. (With the hierarchy the reference's KL of the
task pairs averages over the global samples and then *sums* over classes; here every term
is a mean over classes, one consistent choice listed in docs/fidelity.md.)
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext, Loss

from ._variational_outputs import SCOPES, aux_of, class_groups, need_aux


@attrs.frozen
class PriorKLConfig:
    """``adapter``: the variational adapter's name; ``prior``: "standard" | "data";
    ``scope``: "per_task" | "current" | "seen" (see the module doc); ``scale``: 0.001;
    ``include_global``: add the global adapter's KL when the adapter has the hierarchy."""

    adapter: str = "variational"
    prior: Literal["standard", "data"] = attrs.field(
        default="standard", validator=attrs.validators.in_(("standard", "data")))
    scope: Literal["per_task", "current", "seen"] = attrs.field(
        default="per_task", validator=attrs.validators.in_(SCOPES))
    scale: float = attrs.field(default=0.001, validator=attrs.validators.ge(0))
    include_global: bool = True


def gaussian_kl(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor,
                sigma_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2))."""
    var_ratio = (sigma_q / sigma_p).pow(2)
    return 0.5 * (var_ratio + ((mu_q - mu_p) / sigma_p).pow(2) - 1.0 - var_ratio.log())


def class_mean_kl(kl: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sum over dims, then mean over the kept classes and every leading dim."""
    per_class = kl.sum(-1)                                   # [..., n]
    return per_class[..., keep].mean()


class PriorKL(Loss):
    """KL of the adapter's q to its prior."""

    def __init__(self, cfg: PriorKLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.needs = (f"distributions.{cfg.adapter}",)

    def forward(self, outputs, batch) -> torch.Tensor:
        cfg = self.cfg
        q = (outputs.get("distributions") or {}).get(cfg.adapter)
        if q is None:
            raise ClapkitError(f"loss 'prior_kl': no distribution from adapter '{cfg.adapter}'")
        mu, sigma = q.loc, q.scale
        if cfg.prior == "data":
            mu_p = need_aux(outputs, cfg.adapter, "prior_loc", "prior_kl")
            sigma_p = need_aux(outputs, cfg.adapter, "prior_scale", "prior_kl")
            mu_p, sigma_p = mu_p.unsqueeze(-3), sigma_p.unsqueeze(-3)    # over batch dim
        else:
            mu_p, sigma_p = torch.zeros_like(mu), torch.ones_like(sigma)
        kl = gaussian_kl(mu, sigma, mu_p, sigma_p)
        groups = class_groups(outputs, cfg.adapter, batch, mu.shape[-2], cfg.scope, mu.device,
                              "prior_kl")
        value = sum(class_mean_kl(kl, keep) for keep in groups)
        g_loc = aux_of(outputs, cfg.adapter, "global_loc", "prior_kl")
        if cfg.include_global and g_loc is not None:
            g_scale = need_aux(outputs, cfg.adapter, "global_scale", "prior_kl")
            all_cls = torch.ones(g_loc.shape[-2], dtype=torch.bool, device=g_loc.device)
            value = value + class_mean_kl(
                gaussian_kl(g_loc, g_scale, torch.zeros_like(g_loc), torch.ones_like(g_scale)),
                all_cls)
        return cfg.scale * value


def build(cfg: PriorKLConfig, ctx: BuildContext) -> PriorKL:
    """KL(q || prior) of CLAP4CLIP's variational adapters (prior matching)."""
    return PriorKL(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "prior_kl", build, config=PriorKLConfig)
