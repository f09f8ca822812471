"""`variance` selector: class-balanced exemplars for the replay memory --
lowest predictive variance first: variance of the softmax across each item's own Monte-Carlo
samples, summed over classes (CLAP4CLIP's VarianceExemplarsSelector).

Each class gets its ``class_quota`` share of the budget; ties go to the earlier item.
Scores come from ``_scores`` (item-aligned over Monte-Carlo samples).
"""

from __future__ import annotations

import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import pick_lowest, variance


class VarianceSelector(Selector):
    """Lowest predictive variance first."""

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        return pick_lowest(variance(inputs), inputs.labels, budget)


def build(cfg, ctx: BuildContext) -> VarianceSelector:
    """Lowest predictive variance first (class-balanced exemplar selection)."""
    return VarianceSelector()


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "variance", build)
