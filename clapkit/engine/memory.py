"""Replay memory: class-balanced exemplars chosen by the recipe's selector after each task.

Exemplars are indices into the train split, so the memory is a list of ints (checkpointed
as is) and the next task's loader simply trains on ``new task items + memory``.
"""

from __future__ import annotations

import torch

from ..interfaces import Selector
from .loop import Collected


def select_exemplars(selector: Selector, collected: Collected, budget: int) -> list[int]:
    """Train-split indices of the exemplars ``selector`` keeps out of ``collected``.

    The selector sees the fused image features ``z``, the class-order labels and the scores
    it may rank by (``logits``; ``sample_logits`` ``[S,N,C]`` when the model samples).
    """
    if budget <= 0 or len(collected.index) == 0:
        return []
    scores = {"logits": collected.logits}
    if collected.sample_logits is not None:
        scores["sample_logits"] = collected.sample_logits
    picked = torch.as_tensor(selector.select(collected.z, collected.label, budget, scores),
                             dtype=torch.long)
    return sorted(collected.index[picked].tolist())
