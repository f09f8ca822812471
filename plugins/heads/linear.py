"""`linear` head: a linear probe on z (logistic regression on frozen CLIP features, the
baseline of the CLIP paper, seeds 001/004).

It ignores the text views. When the text comes as Monte-Carlo samples the probe's logits are
repeated as ``sample_logits`` so uncertainty consumers see the (zero) spread honestly instead
of a missing output.
"""

from __future__ import annotations

import attrs
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, Head, HeadOutput


@attrs.frozen
class LinearHeadConfig:
    """``normalize``: L2-normalise z first (as CLIP's probe on normalised features);
    ``bias``: learn a per-class bias; ``init_std``: weight init (0 = zeros, logistic
    regression's start)."""

    normalize: bool = True
    bias: bool = True
    init_std: float = attrs.field(default=0.01, validator=attrs.validators.ge(0))


class LinearHead(Head):
    """logits = W z + b."""

    def __init__(self, dim: int, num_classes: int, cfg: LinearHeadConfig) -> None:
        super().__init__()
        self.normalize = cfg.normalize
        self.fc = nn.Linear(dim, num_classes, bias=cfg.bias)
        if cfg.init_std > 0:
            nn.init.normal_(self.fc.weight, std=cfg.init_std)
        else:
            nn.init.zeros_(self.fc.weight)
        if self.fc.bias is not None:
            nn.init.zeros_(self.fc.bias)

    def forward(self, z, text=None, views=None) -> HeadOutput:
        x = F.normalize(z, dim=-1) if self.normalize else z
        logits = self.fc(x)
        if text is not None and text.dim() == 4:
            return HeadOutput(logits=logits,
                              sample_logits=logits.unsqueeze(0).expand(text.shape[0], -1, -1))
        return HeadOutput(logits=logits)


def build(cfg: LinearHeadConfig, ctx: BuildContext) -> LinearHead:
    """Linear probe on the visual embedding z (logistic-regression baseline)."""
    return LinearHead(ctx.embed_dim, ctx.num_classes, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("head", "linear", build, config=LinearHeadConfig)
