"""`class_balanced` loss: CE re-weighted by the inverse effective number of samples
(Cui et al., CVPR 2019; seed 002's ``--class-balanced-loss``).

``w_c = (1 - beta) / (1 - beta^n_c)``, normalised so that ``sum_c w_c = C``; the loss is the
batch mean of ``w_{y_b} * CE_b`` (as Cui et al.'s reference code: no division by the batch's
weight sum, so rare-class batches really weigh more). Classes with no training sample are
counted as one. The counts come from the training set (``BuildContext.class_counts``).
"""

from __future__ import annotations

import attrs
import torch

from clapkit import hookimpl
from clapkit.functional import (checked_class_counts, classification_logits, mixup_mean,
                                per_sample_cross_entropy)
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class ClassBalancedConfig:
    """``beta`` in [0, 1): 0 = unweighted, -> 1 = inverse class frequency."""

    beta: float = attrs.field(default=0.9999, validator=[attrs.validators.ge(0.0),
                                                        attrs.validators.lt(1.0)])
    over_samples: bool = False


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al.'s class weights ``[C]`` (summing to C) from float counts ``[C]``."""
    w = (1.0 - beta) / (1.0 - torch.pow(torch.as_tensor(beta, dtype=counts.dtype), counts))
    return w / w.sum() * len(counts)


class ClassBalancedLoss(Loss):
    """mean_b w_{y_b} * CE_b, mixup-aware."""

    needs = ("logits",)

    def __init__(self, weights: torch.Tensor, over_samples: bool = False) -> None:
        super().__init__()
        self.over_samples = over_samples
        self.register_buffer("weights", weights.float(), persistent=False)

    def forward(self, outputs, batch) -> torch.Tensor:
        logits = classification_logits(outputs, self.over_samples)
        w = self.weights.to(logits.dtype)
        return mixup_mean(lambda y: per_sample_cross_entropy(logits, y, w), batch)


def build(cfg: ClassBalancedConfig, ctx: BuildContext) -> ClassBalancedLoss:
    """Class-balanced CE with effective-number weights (beta) from the training counts."""
    counts = checked_class_counts(ctx.class_counts, ctx.num_classes, "loss 'class_balanced'")
    if cfg.beta == 0.0:
        weights = torch.ones(len(counts))
    else:
        weights = effective_number_weights(counts, cfg.beta)
    return ClassBalancedLoss(weights, cfg.over_samples)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "class_balanced", build, config=ClassBalancedConfig)
