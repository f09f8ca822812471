"""`concat_linear` (place fusion): ``{stream: [B,D]} -> z [B,D]`` by concatenation in a fixed
stream order and a linear projection ``Linear(n*D, D)``, L2-normalised (seed 002, section 3:
``z = proj([z_face ; z_context])``).

``init = "mean"`` (default) starts the projection at ``[I/n, ..., I/n]`` with zero bias, so z
begins as the mean of the stream embeddings and stays in CLIP's joint space -- stage 1 of the
staged training learns prompts against a *frozen* fusion, which a random projection would make
meaningless. ``init = "default"`` is PyTorch's Linear init (the reference code's).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import Adapter, BuildContext


@attrs.frozen
class ConcatLinearConfig:
    """``order``: stream concatenation order (default: the data's streams, in their order);
    ``init``: "mean" (z starts as the stream mean) or "default"; ``normalize``: L2-normalise z."""

    order: list[str] | None = None
    init: Literal["mean", "default"] = attrs.field(
        default="mean", validator=attrs.validators.in_(("mean", "default")))
    normalize: bool = True


class ConcatLinear(Adapter):
    """Concatenate stream embeddings, project back to D."""

    place = "fusion"

    def __init__(self, dim: int, streams: tuple[str, ...], cfg: ConcatLinearConfig) -> None:
        super().__init__()
        self.streams, self.normalize = tuple(streams), cfg.normalize
        n = len(self.streams)
        self.proj = nn.Linear(n * dim, dim)
        if cfg.init == "mean":
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(dim).repeat(1, n) / n)
                self.proj.bias.zero_()

    def forward(self, stream_z: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [s for s in self.streams if s not in stream_z]
        if missing:
            raise KeyError(f"concat_linear: stream '{missing[0]}' missing from the input "
                           f"(got {', '.join(stream_z)}; expected {', '.join(self.streams)})")
        z = self.proj(torch.cat([stream_z[s] for s in self.streams], dim=-1))
        return F.normalize(z, dim=-1) if self.normalize else z


def build(cfg: ConcatLinearConfig, ctx: BuildContext) -> ConcatLinear:
    """Fusion: concatenate per-stream video embeddings + Linear(n*D, D), L2-normalised."""
    streams = tuple(cfg.order) if cfg.order else tuple(ctx.streams)
    unknown = [s for s in streams if s not in ctx.streams]
    if unknown:
        raise ClapkitError(f"order: unknown stream '{unknown[0]}' (the data yields: "
                           f"{', '.join(ctx.streams)})")
    if len(set(streams)) != len(streams):
        raise ClapkitError(f"order: a stream is listed twice in {list(streams)}")
    return ConcatLinear(ctx.embed_dim, streams, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "concat_linear", build, config=ConcatLinearConfig, place="fusion")
