"""`entropy` selector: class-balanced exemplars for the replay memory -- highest entropy
first (RWalk / CLAP4CLIP's EntropyExemplarsSelector, which keeps the highest-entropy items).

``of``: ``"mean_logits"`` (default, the reference: entropy of the softmax of the
sample-averaged logits) or ``"samples"`` (entropy of the Monte-Carlo predictive, the mean
over samples of the softmax). Each class gets its ``class_quota`` share of the budget; ties
go to the earlier item. Scores come from ``_scores`` (item-aligned over samples).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import entropy, pick_lowest


@attrs.frozen
class EntropySelectorConfig:
    """``of``: "mean_logits" (the reference) | "samples" (Monte-Carlo predictive)."""

    of: Literal["mean_logits", "samples"] = attrs.field(
        default="mean_logits", validator=attrs.validators.in_(("mean_logits", "samples")))


class EntropySelector(Selector):
    """Highest entropy first."""

    def __init__(self, of: str = "mean_logits") -> None:
        self.of = of

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        return pick_lowest(-entropy(inputs, self.of), inputs.labels, budget)


def build(cfg: EntropySelectorConfig, ctx: BuildContext) -> EntropySelector:
    """Highest predictive entropy first (class-balanced exemplar selection)."""
    return EntropySelector(cfg.of)


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "entropy", build, config=EntropySelectorConfig)
