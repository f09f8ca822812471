"""`distance` selector: class-balanced exemplars for the replay memory --
closest to the decision boundary first: the lowest mean logit of the item's own class (RWalk
/ CLAP4CLIP's DistanceExemplarsSelector).

Each class gets its ``class_quota`` share of the budget; ties go to the earlier item.
Scores come from ``_scores`` (item-aligned over Monte-Carlo samples).
"""

from __future__ import annotations

import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import own_logit, pick_lowest


class DistanceSelector(Selector):
    """Closest to the decision boundary first."""

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        return pick_lowest(own_logit(inputs), inputs.labels, budget)


def build(cfg, ctx: BuildContext) -> DistanceSelector:
    """Closest to the decision boundary first (class-balanced exemplar selection)."""
    return DistanceSelector()


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "distance", build)
