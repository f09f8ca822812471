"""`random` selector: class-balanced random exemplars for the replay memory (CLAP4CLIP's
baseline selection).

Each class gets its ``class_quota`` share of the budget; within a class the items are a
uniformly random subset drawn from a generator seeded by ``seed`` (default: the run's seed),
so a rerun keeps the same memory. Selection is one sort, no loop over classes.
"""

from __future__ import annotations

import attrs
import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector, class_quota


@attrs.frozen
class RandomSelectorConfig:
    """``seed``: of the selection generator (default: the run's seed)."""

    seed: int | None = None


class RandomSelector(Selector):
    """Class-balanced uniform sampling without replacement."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        labels = inputs.labels.cpu().long()
        quota = class_quota(labels, budget)
        if not quota:
            return torch.zeros(0, dtype=torch.long)
        classes, inverse = torch.unique(labels, return_inverse=True)
        want = torch.tensor([quota[int(c)] for c in classes])[inverse]       # [N]
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(labels), generator=g)
        order = order[torch.sort(inverse[order], stable=True).indices]       # grouped, shuffled
        grouped = inverse[order]
        starts = torch.searchsorted(grouped, grouped)                        # first of its class
        rank = torch.arange(len(order)) - starts
        keep = order[rank < want[order]]
        return torch.sort(keep).values


def build(cfg: RandomSelectorConfig, ctx: BuildContext) -> RandomSelector:
    """Class-balanced random exemplar selection (seeded)."""
    return RandomSelector(ctx.seed if cfg.seed is None else cfg.seed)


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "random", build, config=RandomSelectorConfig)
