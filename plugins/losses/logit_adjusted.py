"""`logit_adjusted` loss: CE on ``logits + tau * log(prior)`` (Menon et al., ICLR 2021;
seed 002's ``--logit-adj`` / ``--logit-adj-tau``).

The adjustment lives only inside the training loss: the model's logits (and so its
predictions and evaluation) are untouched, which is the logit-adjusted *loss* variant -- the
classifier learns to beat the class prior instead of riding it. The prior is the training-set
class frequency (``BuildContext.class_counts``; empty classes count as one).
"""

from __future__ import annotations

import attrs
import torch

from clapkit import hookimpl
from clapkit.functional import (checked_class_counts, classification_logits, mixup_mean,
                                per_sample_cross_entropy)
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class LogitAdjustedConfig:
    """``tau``: scale of the log-prior added to the logits (1.0 in Menon et al.)."""

    tau: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))
    over_samples: bool = False


class LogitAdjustedLoss(Loss):
    """CE(logits + tau*log prior, y), mixup-aware."""

    needs = ("logits",)

    def __init__(self, log_prior: torch.Tensor, tau: float, over_samples: bool = False) -> None:
        super().__init__()
        self.tau, self.over_samples = float(tau), over_samples
        self.register_buffer("log_prior", log_prior.float(), persistent=False)

    def forward(self, outputs, batch) -> torch.Tensor:
        logits = classification_logits(outputs, self.over_samples)
        adjusted = logits + self.tau * self.log_prior.to(logits.dtype)
        return mixup_mean(lambda y: per_sample_cross_entropy(adjusted, y), batch)


def build(cfg: LogitAdjustedConfig, ctx: BuildContext) -> LogitAdjustedLoss:
    """Logit-adjusted CE: logits + tau*log(class prior) inside the training loss."""
    counts = checked_class_counts(ctx.class_counts, ctx.num_classes, "loss 'logit_adjusted'")
    return LogitAdjustedLoss(torch.log(counts / counts.sum()), cfg.tau, cfg.over_samples)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "logit_adjusted", build, config=LogitAdjustedConfig)
