"""`semantic_ldl` loss: semantic label-distribution learning, ``KL(Q || P)`` (seed 003,
section 1, with its fix).

``Q_b = softmax(cos(t_{y_b}, t_k)_k / temperature)`` is the row of the class-similarity matrix
of the *L2-normalised* text features for the sample's label; ``P_b = softmax(logits_b /
logit_temperature)``. Without the normalisation the dot products are huge and Q saturates or
flattens, and the KL goes to ~0 while nothing is learnt -- the bug seed 003 reports; the
normalisation is unconditional here.

Warmup (seed 003's ``--ldl-warmup``, default 5 epochs as there): for ``batch["epoch"] <
warmup_epochs`` the term is the hard-label CE instead. It lives in this loss rather than in the recipe's loss schedule because
the schedule can only *start* a term late, not *stop* one, and the warmup needs CE to stop
when LDL starts. ``batch["epoch"]`` is the epoch the engine passes (the same one the loss
schedules use). Q is detached by default: a target that can move towards the prediction
(through learnable prompts) is a shortcut to a small KL.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.functional import (classification_logits, mixup_mean, per_sample_cross_entropy,
                                view_or_text)
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class SemanticLDLConfig:
    """``view``: prompt view whose class similarities make the target ("" = the head's view);
    ``temperature``: of the target softmax (0.1 sharpens it); ``logit_temperature``: divides
    the logits (they already carry the head's scale); ``warmup_epochs``: hard-label CE before;
    ``detach_target``: no gradient through Q."""

    view: str = ""
    temperature: float = attrs.field(default=0.1, validator=attrs.validators.gt(0))
    logit_temperature: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    warmup_epochs: int = attrs.field(default=5, validator=attrs.validators.ge(0))  # seed 003
    detach_target: bool = True
    over_samples: bool = False


def semantic_targets(text: torch.Tensor, labels: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """``Q [B,C]``: softmax over classes of cos(t_label, t_k) / temperature.

    ``text`` is ``[C,D]`` or per-sample ``[B,C,D]``.
    """
    t = F.normalize(text, dim=-1)
    if t.dim() == 2:
        sim = t[labels] @ t.t()                                         # [B,C]
    else:
        rows = t[torch.arange(len(labels), device=t.device), labels]    # [B,D]
        sim = torch.einsum("bd,bcd->bc", rows, t)
    return F.softmax(sim / temperature, dim=-1)


def kl_to_targets(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Unreduced ``[B]`` KL(Q || softmax(logits)) for logits ``[B,C]`` or ``[S,B,C]``."""
    logp = F.log_softmax(logits, dim=-1)
    kl = (torch.xlogy(q, q) - q * logp).sum(-1)
    return kl.mean(0) if kl.dim() == 2 else kl


class SemanticLDLLoss(Loss):
    """KL(Q || P) with Q from normalised text similarities; CE during warmup."""

    def __init__(self, cfg: SemanticLDLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.needs = ("logits", f"views.{cfg.view}" if cfg.view else "text")

    def forward(self, outputs, batch) -> torch.Tensor:
        cfg = self.cfg
        logits = classification_logits(outputs, cfg.over_samples)
        if int(batch.get("epoch", cfg.warmup_epochs)) < cfg.warmup_epochs:
            return mixup_mean(lambda y: per_sample_cross_entropy(logits, y), batch)
        text = view_or_text(outputs, cfg.view)
        if cfg.detach_target:
            text = text.detach()
        if text.dim() == 4:                       # Monte-Carlo text samples: their mean
            text = text.mean(0)
        scaled = logits / cfg.logit_temperature
        return mixup_mean(
            lambda y: kl_to_targets(scaled, semantic_targets(text, y, cfg.temperature)), batch)


def build(cfg: SemanticLDLConfig, ctx: BuildContext) -> SemanticLDLLoss:
    """Semantic label-distribution loss KL(Q||P), Q from normalised text similarities."""
    return SemanticLDLLoss(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "semantic_ldl", build, config=SemanticLDLConfig)
