"""`label_smoothing` loss (seed 003's LSR2 fix): ``(1-eps) * CE(p, y) + eps * mean_i(-log p_i)``.

This is the same quantity as ``F.cross_entropy(logits, y, label_smoothing=eps)`` (PyTorch
smooths towards the uniform distribution including the true class: target
``(1-eps)*onehot + eps/C``), written out with no masks or one-hot tensors, so it works for any
batch (the old LSR2 broke on uneven batches).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.functional import classification_logits, mixup_mean
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class LabelSmoothingConfig:
    """``eps``: smoothing factor in [0, 1); ``over_samples``: per Monte-Carlo sample."""

    eps: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0.0),
                                                     attrs.validators.lt(1.0)])
    over_samples: bool = False


def smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Unreduced ``[B]`` label-smoothed CE for logits ``[B,C]`` or ``[S,B,C]``."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, labels.expand(logp.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    loss = (1.0 - eps) * nll + eps * (-logp.mean(-1))
    return loss.mean(0) if loss.dim() == 2 else loss


class LabelSmoothingLoss(Loss):
    """(1-eps)*CE + eps*mean_i(-log p_i), mixup-aware."""

    needs = ("logits",)

    def __init__(self, eps: float, over_samples: bool = False) -> None:
        super().__init__()
        self.eps, self.over_samples = float(eps), over_samples

    def forward(self, outputs, batch) -> torch.Tensor:
        logits = classification_logits(outputs, self.over_samples)
        return mixup_mean(lambda y: smoothed_ce(logits, y, self.eps), batch)


def build(cfg: LabelSmoothingConfig, ctx: BuildContext) -> LabelSmoothingLoss:
    """Label-smoothing cross-entropy: (1-eps)*CE + eps*mean(-log p)."""
    return LabelSmoothingLoss(cfg.eps, cfg.over_samples)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "label_smoothing", build, config=LabelSmoothingConfig)
