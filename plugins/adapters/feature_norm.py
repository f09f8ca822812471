"""`feature_norm` (place image): standardise per-frame image features with running statistics.

Frozen CLIP features are anisotropic: they share a large common direction, so cosine
similarities between images sit close together and a cosine head sees small differences.
Subtracting the running mean and dividing by the running standard deviation of each channel
(BatchNorm without affine parameters by default) removes that common part before the adapters.
A randomly initialised CLIP (the demo's) is the extreme case: its image features have a mean
pairwise cosine of about 0.96.

``statistics = "batch"`` (default) is BatchNorm: training batches are standardised with their
own statistics and the running ones follow an exponential average -- in a class-incremental
run they drift towards the newest task's data, so the features an old task's head was
trained on move. ``"cumulative"`` keeps the exact mean and variance of every training
feature seen so far (Chan et al.'s parallel update, float64) and standardises with them in
training and evaluation alike: old and new tasks share one fixed-as-it-grows transform.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from einops import rearrange
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Adapter, BuildContext


@attrs.frozen
class FeatureNormConfig:
    """``momentum``: running-statistics momentum (``"batch"``); ``affine``: learn a scale and
    shift too; ``statistics``: ``"batch"`` (BatchNorm) or ``"cumulative"`` (see the module
    docstring)."""

    momentum: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0.0),
                                                          attrs.validators.le(1.0)])
    affine: bool = False
    eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0.0))
    statistics: Literal["batch", "cumulative"] = attrs.field(
        default="batch", validator=attrs.validators.in_(("batch", "cumulative")))


class FeatureNorm(Adapter):
    """``[B,T,D] -> [B,T,D]``: per-channel standardisation over batch and frames."""

    place = "image"

    def __init__(self, dim: int, cfg: FeatureNormConfig) -> None:
        super().__init__()
        self.cumulative = cfg.statistics == "cumulative"
        self.norm = nn.BatchNorm1d(dim, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine)
        if self.cumulative:
            self.register_buffer("count", torch.zeros((), dtype=torch.float64))
            self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
            self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    def _accumulate(self, flat: torch.Tensor) -> None:
        """Merge the batch's mean and sum of squares into the totals (exact, any order)."""
        x = flat.detach().double()
        n_b = float(x.shape[0])
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta ** 2 * (self.count * n_b / n)
        self.count.copy_(n)

    def _standardise(self, flat: torch.Tensor) -> torch.Tensor:
        var = self.m2 / self.count.clamp_min(1.0)
        out = (flat - self.mean.to(flat.dtype)) / (var.to(flat.dtype) + self.norm.eps).sqrt()
        if self.norm.affine:
            out = out * self.norm.weight + self.norm.bias
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        flat = rearrange(x, "b t d -> (b t) d")
        if self.cumulative:
            if self.training:
                self._accumulate(flat)
            return rearrange(self._standardise(flat), "(b t) d -> b t d", b=b)
        if self.training and flat.shape[0] < 2:  # one frame of one item: no batch statistics
            self.norm.eval()
            out = self.norm(flat)
            self.norm.train()
        else:
            out = self.norm(flat)
        return rearrange(out, "(b t) d -> b t d", b=b)


def build(cfg: FeatureNormConfig, ctx: BuildContext) -> FeatureNorm:
    """Standardise per-frame features with running statistics (counters anisotropy)."""
    return FeatureNorm(ctx.embed_dim, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "feature_norm", build, config=FeatureNormConfig, place="image")
