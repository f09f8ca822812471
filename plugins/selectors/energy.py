"""`energy` selector: class-balanced exemplars for the replay memory --
lowest logsumexp first (the mean over Monte-Carlo samples of logsumexp over the seen classes;
the energy is its negative, so these are the highest-energy items), as CLAP4CLIP's EnergyExemplarsSelector.

Each class gets its ``class_quota`` share of the budget; ties go to the earlier item.
Scores come from ``_scores`` (item-aligned over Monte-Carlo samples).
"""

from __future__ import annotations

import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import energy, pick_lowest


class EnergySelector(Selector):
    """Lowest logsumexp first."""

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        return pick_lowest(energy(inputs), inputs.labels, budget)


def build(cfg, ctx: BuildContext) -> EnergySelector:
    """Lowest logsumexp first (class-balanced exemplar selection)."""
    return EnergySelector()


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "energy", build)
