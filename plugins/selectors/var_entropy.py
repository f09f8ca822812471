"""`var_entropy` selector: class-balanced exemplars for the replay memory --
low variance and high entropy together: the sum of the item's rank by variance (ascending)
and by entropy (descending). The reference takes a geometric mean of the variance and the
negative entropy, which is NaN for any non-degenerate item; ranks keep both orders and need
no scale.

Each class gets its ``class_quota`` share of the budget; ties go to the earlier item.
Scores come from ``_scores`` (item-aligned over Monte-Carlo samples).
"""

from __future__ import annotations

import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import entropy, pick_lowest, ranks, variance


class VarEntropySelector(Selector):
    """Low variance and high entropy together."""

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        # the reference's entropy here is of the Monte-Carlo predictive (probs.mean over samples)
        key = ranks(variance(inputs)) + ranks(-entropy(inputs, "samples"))
        return pick_lowest(key, inputs.labels, budget)


def build(cfg, ctx: BuildContext) -> VarEntropySelector:
    """Low variance and high entropy together (class-balanced exemplar selection)."""
    return VarEntropySelector()


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "var_entropy", build)
