"""`herding` selector: class-balanced exemplars for the replay memory -- iCaRL herding: per
class, greedily the items whose running mean stays closest to the class mean of L2-normalised
vectors.

``on``: ``"logits"`` (default, the reference's HerdingExemplarsSelector: the model's
test-mode mean logits over the seen classes, normalised) or ``"features"`` (the fused image
features z). Each class gets its ``class_quota`` share of the budget; ties go to the
earlier item.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from clapkit import hookimpl
from clapkit.interfaces import BuildContext, SelectionInputs, Selector

from ._scores import herding


@attrs.frozen
class HerdingSelectorConfig:
    """``on``: "logits" (the reference) | "features" (image features z)."""

    on: Literal["logits", "features"] = attrs.field(
        default="logits", validator=attrs.validators.in_(("logits", "features")))


class HerdingSelector(Selector):
    """iCaRL herding on normalised mean logits (or features)."""

    def __init__(self, on: str = "logits") -> None:
        self.on = on

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        vectors = inputs.logits if self.on == "logits" else inputs.features
        return herding(vectors, inputs.labels, budget)


def build(cfg: HerdingSelectorConfig, ctx: BuildContext) -> HerdingSelector:
    """iCaRL herding (class-balanced exemplar selection)."""
    return HerdingSelector(cfg.on)


@hookimpl
def clapkit_register(registrar):
    registrar.add("selector", "herding", build, config=HerdingSelectorConfig)
