"""`cosine` head: scaled cosine similarity between z and the class text features."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.geometry import LogitScale, cosine_logits  # re-exported: maths in the core
from clapkit.interfaces import BuildContext, Head, HeadOutput

__all__ = ["CosineHead", "CosineHeadConfig", "build", "cosine_logits", "dot_logits"]


@attrs.frozen
class CosineHeadConfig:
    """``temperature``: logits = cos / temperature; 0 = use the backbone's logit_scale.
    ``normalize_text``: divide every text row (each Monte-Carlo sample) by its norm; false =
    ``scale * normalise(z) @ text`` on the text as it comes -- CLAP4CLIP's reference scores
    its samples ``t + mu + sigma*eps`` this way (their norms grow with the noise)."""

    temperature: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    learn_scale: bool = False
    normalize_text: bool = True


def dot_logits(z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``normalise(z) . t`` with the text left as is: ``[C,D]`` -> ``[B,C]``, ``[B,C,D]`` ->
    ``[B,C]``, ``[S,B,C,D]`` (batch dim 1 or a stride-0 expand: read once) -> ``[S,B,C]``."""
    z = F.normalize(z, dim=-1)
    if text.dim() == 2:
        return z @ text.t()
    if text.shape[-3] == 1 or text.stride(-3) == 0:
        flat = text.squeeze(-3) if text.shape[-3] == 1 else text.select(-3, 0)  # [...,C,D]
        return torch.matmul(flat, z.t()).transpose(-1, -2)                     # [...,B,C]
    return torch.matmul(text, z.unsqueeze(-1)).squeeze(-1)


class CosineHead(Head):
    """Cosine similarity / temperature; Monte-Carlo samples are averaged in logit space."""

    def __init__(self, scale: LogitScale, normalize_text: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.normalize_text = normalize_text

    def forward(self, z, text, views=None) -> HeadOutput:
        sims = cosine_logits(z, text) if self.normalize_text else dot_logits(z, text)
        return HeadOutput.from_logits(sims * self.scale())


def build(cfg: CosineHeadConfig, ctx: BuildContext) -> CosineHead:
    """Scaled cosine-similarity classifier head."""
    return CosineHead(LogitScale.from_context(cfg.temperature, ctx, cfg.learn_scale),
                      cfg.normalize_text)


@hookimpl
def clapkit_register(registrar):
    registrar.add("head", "cosine", build, config=CosineHeadConfig)
