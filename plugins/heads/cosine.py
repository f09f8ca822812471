"""`cosine` head: scaled cosine similarity between z and the class text features."""

from __future__ import annotations

import attrs

from clapkit import hookimpl
from clapkit.geometry import LogitScale, cosine_logits  # re-exported: maths in the core
from clapkit.interfaces import BuildContext, Head, HeadOutput

__all__ = ["CosineHead", "CosineHeadConfig", "build", "cosine_logits"]


@attrs.frozen
class CosineHeadConfig:
    """``temperature``: logits = cos / temperature; 0 = use the backbone's logit_scale."""

    temperature: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    learn_scale: bool = False


class CosineHead(Head):
    """Cosine similarity / temperature; Monte-Carlo samples are averaged in logit space."""

    def __init__(self, scale: LogitScale) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, z, text, views=None) -> HeadOutput:
        return HeadOutput.from_logits(cosine_logits(z, text) * self.scale())


def build(cfg: CosineHeadConfig, ctx: BuildContext) -> CosineHead:
    """Scaled cosine-similarity classifier head."""
    return CosineHead(LogitScale.from_context(cfg.temperature, ctx, cfg.learn_scale))


@hookimpl
def clapkit_register(registrar):
    registrar.add("head", "cosine", build, config=CosineHeadConfig)
