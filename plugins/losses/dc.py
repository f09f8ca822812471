"""`dc` loss: decorrelation (seed 002, section 6; seed 003, section 2).

* ``prompts``: the mean squared off-diagonal cosine similarity of the class prompts,
  ``sum_{i != j} cos(t_i, t_j)^2 / (C (C-1))`` -- pushes the classes' prompts apart (the
  reference CLIP-CAER ``DCLoss``).
* ``features``: Barlow-Twins-style redundancy reduction on z: standardise every channel over
  the batch, ``R = z_n^T z_n / B``, and take the mean squared off-diagonal entry of R,
  ``sum_{i != j} R_ij^2 / (D (D-1))`` -- penalises correlated feature channels.
* ``both``: the sum of the two.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.functional import off_diagonal, view_or_text
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class DCConfig:
    """``target``: "prompts", "features" or "both"; ``view``: prompt view decorrelated
    ("" = the head's view); ``eps``: added to the channel std."""

    target: Literal["prompts", "features", "both"] = attrs.field(
        default="prompts", validator=attrs.validators.in_(("prompts", "features", "both")))
    view: str = ""
    eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))


def prompt_decorrelation(text: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine of class prompts ``[...,C,D]``."""
    t = F.normalize(text, dim=-1)
    sim = t @ t.transpose(-1, -2)
    return off_diagonal(sim).pow(2).mean()


def feature_decorrelation(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared off-diagonal channel correlation of ``z [B,D]`` over the batch."""
    if z.shape[0] < 2:
        return z.sum() * 0.0
    zn = (z - z.mean(0)) / (z.std(0, unbiased=False) + eps)
    corr = zn.t() @ zn / z.shape[0]
    return off_diagonal(corr).pow(2).mean()


class DCLoss(Loss):
    """Decorrelation of class prompts and/or feature channels."""

    def __init__(self, cfg: DCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        needs: list[str] = []
        if cfg.target in ("prompts", "both"):
            needs.append(f"views.{cfg.view}" if cfg.view else "text")
        if cfg.target in ("features", "both"):
            needs.append("z")
        self.needs = tuple(needs)

    def forward(self, outputs, batch) -> torch.Tensor:
        cfg = self.cfg
        total = None
        if cfg.target in ("prompts", "both"):
            total = prompt_decorrelation(view_or_text(outputs, cfg.view))
        if cfg.target in ("features", "both"):
            f = feature_decorrelation(outputs["z"], cfg.eps)
            total = f if total is None else total + f
        return total


def build(cfg: DCConfig, ctx: BuildContext) -> DCLoss:
    """Decorrelation loss on class prompts and/or the channels of z."""
    return DCLoss(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "dc", build, config=DCConfig)
