"""`cross_entropy` loss: hard-label CE on the head's logits (mixup-aware).

``classes = "seen"`` (default): the softmax runs over every class seen so far (the engine
has already set the unseen ones to -inf). ``classes = "current"``: over the current task's
classes only (``step.task_of_class == step.task``), i.e. the CE of a classifier that knows
only this task's classes -- AttriCLIP's class-incremental training (its ``fit`` remaps the
labels to the task and builds logits over the task's class names only). Every label of the
batch must then belong to the current task (a replay batch is an error).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.functional import classification_logits, mixup_mean, per_sample_cross_entropy
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class CrossEntropyConfig:
    """``over_samples``: average CE over the Monte-Carlo ``sample_logits`` when the pipeline
    produces them (CLAP4CLIP's per-sample CE) instead of using the averaged logits;
    ``classes``: the softmax over the ``seen`` classes or the ``current`` task's only."""

    over_samples: bool = False
    classes: Literal["seen", "current"] = attrs.field(
        default="seen", validator=attrs.validators.in_(("seen", "current")))


def current_task_logits(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """``logits`` with the classes outside the current task at -inf (unchanged without a
    step context, i.e. outside an incremental run). Labels of other tasks are an error."""
    step = batch.get("step")
    if step is None or step.task_of_class is None:
        return logits
    c = logits.shape[-1]
    keep = step.task_of_class[:c].to(logits.device) == int(step.task)
    for key in ("label", "label_b"):
        y = batch.get(key)
        if y is not None and not bool(keep[y.to(logits.device)].all()):
            raise ClapkitError(f"cross_entropy classes = \"current\": the batch has labels of "
                               f"tasks other than task {int(step.task)} (replay memory?); use "
                               f"classes = \"seen\" for this stage")
    return logits.masked_fill(~keep, float("-inf"))


class CrossEntropyLoss(Loss):
    """mean_b CE(logits_b, y_b); with mixup lam*CE(y_a) + (1-lam)*CE(y_b)."""

    needs = ("logits",)

    def __init__(self, over_samples: bool = False, classes: str = "seen") -> None:
        super().__init__()
        self.over_samples, self.classes = over_samples, classes

    def forward(self, outputs, batch) -> torch.Tensor:
        logits = classification_logits(outputs, self.over_samples)
        if self.classes == "current":
            logits = current_task_logits(logits, batch)
        return mixup_mean(lambda y: per_sample_cross_entropy(logits, y), batch)


def build(cfg: CrossEntropyConfig, ctx: BuildContext) -> CrossEntropyLoss:
    """Cross-entropy on hard labels (mixup-aware); over the seen or the current task's
    classes."""
    return CrossEntropyLoss(cfg.over_samples, cfg.classes)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "cross_entropy", build, config=CrossEntropyConfig)
