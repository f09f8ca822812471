"""`ortho` loss: CLAP4CLIP's orthogonality term (``ortho_loss``, weight 5 in the reference).

With ``N [n,D]`` the per-class mean noise sample of the variational adapter over all seen
classes, ``sims = N N^T`` and ``L = scale * CE(sims, diag)``: each class's mean sample is
pushed to be most similar to itself and away from every other class's, across tasks.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, Loss

from ._variational_outputs import need_aux


@attrs.frozen
class OrthoConfig:
    """``adapter``: the variational adapter; ``scale``: reference 5."""

    adapter: str = "variational"
    scale: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))


def ortho_value(means: torch.Tensor) -> torch.Tensor:
    """``CE(M M^T, arange)`` over the rows of ``means [n,D]``."""
    sims = means @ means.t()
    return F.cross_entropy(sims, torch.arange(sims.shape[0], device=sims.device))


class Ortho(Loss):
    """Cross-entropy of the class-mean-sample Gram matrix against the identity."""

    def __init__(self, cfg: OrthoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.needs = (f"aux.{cfg.adapter}.noise_mean",)

    def forward(self, outputs, batch) -> torch.Tensor:
        return self.cfg.scale * ortho_value(need_aux(outputs, self.cfg.adapter,
                                                     "noise_mean", "ortho"))


def build(cfg: OrthoConfig, ctx: BuildContext) -> Ortho:
    """Orthogonality of the per-class mean samples across tasks (weight 5)."""
    return Ortho(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "ortho", build, config=OrthoConfig)
