"""Replay memory: class-balanced exemplars chosen by the recipe's selector after each task.

Exemplars are indices into the train split, so the memory is a list of ints (checkpointed
as is) and the next task's loader simply trains on ``new task items + memory``.
"""

from __future__ import annotations

import torch

from ..interfaces import SelectionInputs, Selector
from .loop import Collected


def selection_inputs(collected: Collected, seen: int | None) -> SelectionInputs:
    """The selector's view of the candidates: logits (and each item's own samples) sliced to
    the ``seen`` classes -- never ``-inf``-masked, so entropies and energies stay finite."""
    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return x if x is None or seen is None else x[..., :seen].contiguous()

    return SelectionInputs(features=collected.z, labels=collected.label,
                           logits=cut(collected.logits),
                           sample_logits=cut(collected.sample_logits),
                           sample_mask=cut(collected.sample_mask), index=collected.index)


def select_exemplars(selector: Selector, collected: Collected, budget: int,
                     seen: int | None = None) -> list[int]:
    """Train-split indices of the exemplars ``selector`` keeps out of ``collected``."""
    if budget <= 0 or len(collected.index) == 0:
        return []
    inputs = selection_inputs(collected, seen)
    picked = torch.as_tensor(selector.select(inputs, budget), dtype=torch.long)
    if picked.numel() and (picked.min() < 0 or picked.max() >= len(collected.index)):
        raise IndexError(f"selector {type(selector).__name__} returned positions outside "
                         f"[0, {len(collected.index)})")
    return sorted(collected.index[picked].tolist())
