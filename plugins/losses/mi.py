"""`mi` loss: symmetric InfoNCE between the descriptive and the soft prompt views (seed 002,
section 4): it keeps the learnable prompts t_soft near the meaning of the fixed descriptive
prompts t_desc, a lower bound on their mutual information.

``logits = cos(t_soft(i), t_desc(j)) / temperature``; the positive pair of class i is (i, i);
``L = (CE(logits, i) + CE(logits^T, i)) / 2``. Per-sample views ``[B,C,D]`` give one C x C
problem per sample, averaged.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.functional import view_or_text
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class MIConfig:
    """``desc_view``/``soft_view``: the two prompt views; ``temperature`` of the InfoNCE."""

    desc_view: str = "desc"
    soft_view: str = "soft"
    temperature: float = attrs.field(default=0.07, validator=attrs.validators.gt(0))


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of row-aligned ``[...,C,D]`` sets (positives on the diagonal)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = (a @ b.transpose(-1, -2)) / temperature                  # [...,C,C]
    c = logits.shape[-1]
    flat = logits.reshape(-1, c, c)
    target = torch.arange(c, device=logits.device).repeat(flat.shape[0])
    ab = F.cross_entropy(flat.reshape(-1, c), target)
    ba = F.cross_entropy(flat.transpose(-1, -2).reshape(-1, c), target)
    return 0.5 * (ab + ba)


class MILoss(Loss):
    """InfoNCE(t_soft, t_desc), both directions."""

    def __init__(self, cfg: MIConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.needs = tuple(f"views.{v}" if v else "text" for v in (cfg.desc_view, cfg.soft_view))

    def forward(self, outputs, batch) -> torch.Tensor:
        desc = view_or_text(outputs, self.cfg.desc_view)
        soft = view_or_text(outputs, self.cfg.soft_view)
        desc, soft = torch.broadcast_tensors(desc, soft)   # [C,D] vs [B,C,D] views
        return symmetric_info_nce(soft, desc, self.cfg.temperature)


def build(cfg: MIConfig, ctx: BuildContext) -> MILoss:
    """Mutual-information (symmetric InfoNCE) between descriptive and soft prompt views."""
    return MILoss(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "mi", build, config=MIConfig)
