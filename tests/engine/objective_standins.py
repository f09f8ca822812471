"""A run without a classifier (loaded via ``plugins = ["engine_standins",
"objective_standins"]``): an image-text alignment loss over ``z`` and the class text, and an
epoch evaluation that measures text retrieval -- so the core is exercised with no [head] and
a selection metric that is not a classification one."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.interfaces import Loss


@attrs.frozen
class NoCfg:
    pass


class Align(Loss):
    """InfoNCE of each item's ``z`` against the class texts (the item's class is positive)."""

    needs = ("z", "views.text")

    def forward(self, outputs, batch):
        z = F.normalize(outputs["z"], dim=-1)
        t = F.normalize(outputs["views"]["text"], dim=-1)
        return F.cross_entropy(20 * z @ t.T, batch["label"])


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "t_align", lambda cfg, ctx: Align(), config=NoCfg)


@hookimpl
def clapkit_epoch_evaluate(run, task, epoch, evaluation):
    """``valid/text_r1``: how often the nearest class text of an item is its own class."""
    hits, n = [0], [0]

    def count(batch, outputs):
        z = F.normalize(outputs["z"].float(), dim=-1)
        t = F.normalize(outputs["views"]["text"].float(), dim=-1)
        hits[0] += int(((z @ t.T).argmax(1) == batch["label"]).sum())
        n[0] += int(batch["label"].numel())

    evaluation.run(evaluation.splits["valid"], range(task + 1), count)
    return {"valid/text_r1": hits[0] / max(1, n[0])}
