"""`cross_entropy` loss: hard-label CE on the head's logits (mixup-aware)."""

from __future__ import annotations

import attrs
import torch

from clapkit import hookimpl
from clapkit.functional import classification_logits, mixup_mean, per_sample_cross_entropy
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class CrossEntropyConfig:
    """``over_samples``: average CE over the Monte-Carlo ``sample_logits`` when the pipeline
    produces them (CLAP4CLIP's per-sample CE) instead of using the averaged logits."""

    over_samples: bool = False


class CrossEntropyLoss(Loss):
    """mean_b CE(logits_b, y_b); with mixup lam*CE(y_a) + (1-lam)*CE(y_b)."""

    needs = ("logits",)

    def __init__(self, over_samples: bool = False) -> None:
        super().__init__()
        self.over_samples = over_samples

    def forward(self, outputs, batch) -> torch.Tensor:
        logits = classification_logits(outputs, self.over_samples)
        return mixup_mean(lambda y: per_sample_cross_entropy(logits, y), batch)


def build(cfg: CrossEntropyConfig, ctx: BuildContext) -> CrossEntropyLoss:
    """Cross-entropy on hard labels (mixup-aware)."""
    return CrossEntropyLoss(cfg.over_samples)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "cross_entropy", build, config=CrossEntropyConfig)
