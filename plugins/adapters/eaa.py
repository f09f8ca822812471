"""`eaa` (place image): the Expression-Aware Adapter of the enhanced CLIP-CAER (seed 002,
section 2), a bottleneck D -> D/reduction -> D after the frozen image encoder on the face
stream (512 -> 128 -> 512 at the default reduction 4).

``residual = false`` is the reference form, ``x' = ReLU(W_up ReLU(W_down x))`` (it replaces the
CLIP feature). ``residual = true`` (default) adds it instead, ``x' = x + ratio * A(x)``, with
the up projection zero-initialised so training starts from exactly CLIP's features -- the
seed's aim of adapting "without losing the generalisation of pretrained CLIP". A final ReLU
behind a zero-initialised projection would never receive a gradient (ReLU'(0) = 0), so that
combination is refused.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Adapter, BuildContext
from clapkit.validators import size


@attrs.frozen
class EAAConfig:
    """``reduction``: bottleneck width D/reduction; ``residual``: x + ratio*A(x) instead of
    A(x); ``ratio``: residual scale; ``zero_init``: start the up projection at 0 (identity at
    init when residual); ``final_act``: ReLU after the up projection (the reference has it);
    ``bias``: biases in the two linear layers (the reference has none)."""

    reduction: int = attrs.field(default=4, validator=size(1_024))
    residual: bool = True
    ratio: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))
    zero_init: bool | None = None      # default: true when residual, false otherwise
    final_act: bool | None = None      # default: false when residual, true otherwise
    bias: bool = False

    def __attrs_post_init__(self) -> None:
        self.resolved()

    def resolved(self) -> tuple[bool, bool]:
        """``(zero_init, final_act)`` with the defaults filled in; refuses dead combinations."""
        zero = self.residual if self.zero_init is None else self.zero_init
        act = (not self.residual) if self.final_act is None else self.final_act
        if zero and not self.residual:
            raise ValueError("eaa: zero_init without residual outputs zeros; set residual = "
                             "true or zero_init = false")
        if zero and act:
            raise ValueError("eaa: zero_init with final_act leaves the up projection without "
                             "gradient (ReLU'(0) = 0); set one of them to false")
        return zero, act


class ExpressionAwareAdapter(Adapter):
    """``[B,T,D] -> [B,T,D]`` bottleneck adapter."""

    place = "image"

    def __init__(self, dim: int, cfg: EAAConfig) -> None:
        super().__init__()
        zero, act = cfg.resolved()
        hidden = max(1, dim // cfg.reduction)
        self.residual, self.ratio = cfg.residual, float(cfg.ratio)
        self.down = nn.Linear(dim, hidden, bias=cfg.bias)
        self.up = nn.Linear(hidden, dim, bias=cfg.bias)
        self.act = nn.ReLU()
        self.final_act = nn.ReLU() if act else nn.Identity()
        if zero:
            nn.init.zeros_(self.up.weight)
            if self.up.bias is not None:
                nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.final_act(self.up(self.act(self.down(x))))
        return x + self.ratio * a if self.residual else a


def build(cfg: EAAConfig, ctx: BuildContext) -> ExpressionAwareAdapter:
    """Expression-Aware Adapter: bottleneck D -> D/r -> D on face-stream frame features."""
    return ExpressionAwareAdapter(ctx.embed_dim, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "eaa", build, config=EAAConfig, place="image")
