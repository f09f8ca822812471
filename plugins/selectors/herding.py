"""`herding` selector: class-balanced exemplars for the replay memory --
iCaRL herding: per class, greedily the items whose running mean stays closest to the class
mean of the normalised features z.

Each class gets its ``class_quota`` share of the budget; ties go to the earlier item.
Scores come from ``_scores`` (item-aligned over Monte-Carlo samples).
"""

from __future__ import annotations

import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import herding


class HerdingSelector(Selector):
    """iCaRL herding on the normalised features."""

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        return herding(inputs.features, inputs.labels, budget)


def build(cfg, ctx: BuildContext) -> HerdingSelector:
    """iCaRL herding (class-balanced exemplar selection)."""
    return HerdingSelector()


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "herding", build)
