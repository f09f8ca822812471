"""`entropy` selector: class-balanced exemplars for the replay memory --
highest entropy of the Monte-Carlo predictive first (RWalk / CLAP4CLIP's
EntropyExemplarsSelector).

Each class gets its ``class_quota`` share of the budget; ties go to the earlier item.
Scores come from ``_scores`` (item-aligned over Monte-Carlo samples).
"""

from __future__ import annotations

import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import entropy, pick_lowest


class EntropySelector(Selector):
    """Highest Monte-Carlo predictive entropy first."""

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        return pick_lowest(-entropy(inputs), inputs.labels, budget)


def build(cfg, ctx: BuildContext) -> EntropySelector:
    """Highest Monte-Carlo predictive entropy first (class-balanced exemplar selection)."""
    return EntropySelector()


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "entropy", build)
