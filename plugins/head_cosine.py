"""`cosine` head: scaled cosine similarity between z and the class text features."""

from __future__ import annotations

import attrs
import torch

from clapkit import hookimpl
from clapkit.geometry import cosine_logits  # re-exported: the maths lives in the core
from clapkit.interfaces import BuildContext, Head, HeadOutput

__all__ = ["CosineHead", "CosineHeadConfig", "build", "cosine_logits"]


@attrs.frozen
class CosineHeadConfig:
    """``temperature``: logits = cos / temperature; 0 = use the backbone's logit_scale."""

    temperature: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    learn_scale: bool = False


class CosineHead(Head):
    """Cosine similarity / temperature; Monte-Carlo samples are averaged in logit space."""

    def __init__(self, scale: float, learn_scale: bool) -> None:
        super().__init__()
        log_scale = torch.tensor(float(scale)).log()
        if learn_scale:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, z, text, views=None) -> HeadOutput:
        logits = cosine_logits(z, text) * self.log_scale.exp()
        if text.dim() == 4:
            return HeadOutput(logits=logits.mean(0), sample_logits=logits)
        return HeadOutput(logits=logits)


def build(cfg: CosineHeadConfig, ctx: BuildContext) -> CosineHead:
    """Scaled cosine-similarity classifier head."""
    if cfg.temperature > 0:
        scale = 1.0 / cfg.temperature
    elif ctx.backbone is not None:
        scale = float(ctx.backbone.logit_scale.detach())
    else:
        scale = 100.0
    return CosineHead(scale, cfg.learn_scale)


@hookimpl
def clapkit_register(registrar):
    registrar.add("head", "cosine", build, config=CosineHeadConfig)
