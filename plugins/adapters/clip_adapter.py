"""`clip_adapter` (place image): CLIP-Adapter's residual bottleneck on image features
(Gao et al., 2021): ``x' = ratio * A(x) + (1 - ratio) * x`` with
``A = ReLU(W_up ReLU(W_down x))`` and no biases, as in the paper.

``ratio = 0`` is the identity; the paper's image-side default is 0.2.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Adapter, BuildContext
from clapkit.validators import size


@attrs.frozen
class ClipAdapterConfig:
    """``reduction``: bottleneck D -> D/reduction -> D; ``ratio``: weight of the adapted
    features in the residual blend (CLIP-Adapter's alpha)."""

    reduction: int = attrs.field(default=4, validator=size(1_024))
    ratio: float = attrs.field(default=0.2, validator=[attrs.validators.ge(0.0),
                                                       attrs.validators.le(1.0)])


class ClipAdapter(Adapter):
    """``[B,T,D] -> [B,T,D]`` residual bottleneck."""

    place = "image"

    def __init__(self, dim: int, cfg: ClipAdapterConfig) -> None:
        super().__init__()
        hidden = max(1, dim // cfg.reduction)
        self.ratio = float(cfg.ratio)
        self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, dim, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.fc(x) + (1.0 - self.ratio) * x


def build(cfg: ClipAdapterConfig, ctx: BuildContext) -> ClipAdapter:
    """CLIP-Adapter residual bottleneck on per-frame image features."""
    return ClipAdapter(ctx.embed_dim, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "clip_adapter", build, config=ClipAdapterConfig, place="image")
