"""`temporal_transformer` (place video): ``[B,T,D] -> [B,D]`` per stream (seed 002,
section 3; CLIP-CAER's ``Temporal_Transformer_Cls``).

A learnable CLS token is prepended to the frame features, learnable positional embeddings
(for up to ``max_frames`` frames plus the CLS slot) are added, ``depth`` pre-norm transformer
blocks run, and the CLS token is the video embedding. Attention uses
``F.scaled_dot_product_attention`` (flash/memory-efficient kernels where available).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Adapter, BuildContext
from clapkit.validators import number, size

_pos = attrs.validators.gt(0)

#: the widest attention (heads x dim_head) the adapter builds: 8x a ViT-L/14 block's 1,024
MAX_WIDTH = 8_192


@attrs.frozen
class TemporalTransformerConfig:
    """``max_frames``: longest clip (positional slots); ``depth``: blocks; ``heads`` x
    ``dim_head``: attention width; ``mlp_ratio``: MLP hidden = ratio * D (CLIP-CAER: 1024 for
    D = 512); ``dropout``; ``init_std``: std of the CLS token and positional embeddings."""

    max_frames: int = attrs.field(default=16, validator=size(4_096))
    depth: int = attrs.field(default=1, validator=size(48))
    heads: int = attrs.field(default=8, validator=size(128))
    dim_head: int = attrs.field(default=64, validator=size(512))
    mlp_ratio: float = attrs.field(default=2.0, validator=number(0, 16, lo_open=True))
    dropout: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0.0),
                                                         attrs.validators.lt(1.0)])
    init_std: float = attrs.field(default=0.02, validator=_pos)

    def __attrs_post_init__(self) -> None:
        if self.heads * self.dim_head > MAX_WIDTH:      # each bound alone allows 65,536
            raise ValueError(f"heads x dim_head must be at most {MAX_WIDTH} (the attention "
                             f"width), got {self.heads} x {self.dim_head}")


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int, hidden: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b n (three h d) -> three b h n d",
                            three=3, h=self.heads)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training
                                           else 0.0)
        x = x + self.drop(self.proj(rearrange(a, "b h n d -> b n (h d)")))
        return x + self.mlp(self.norm2(x))


class TemporalTransformer(Adapter):
    """CLS-token temporal transformer over frame features."""

    place = "video"

    def __init__(self, dim: int, cfg: TemporalTransformerConfig) -> None:
        super().__init__()
        self.max_frames = cfg.max_frames
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * cfg.init_std)
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.max_frames + 1, dim) * cfg.init_std)
        hidden = max(1, int(round(cfg.mlp_ratio * dim)))
        self.blocks = nn.ModuleList(Block(dim, cfg.heads, cfg.dim_head, hidden, cfg.dropout)
                                    for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if t > self.max_frames:
            raise ValueError(f"temporal_transformer: clip has {t} frames but max_frames = "
                             f"{self.max_frames}; raise max_frames in the recipe")
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embedding[:, :t + 1].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return x[:, 0]


def build(cfg: TemporalTransformerConfig, ctx: BuildContext) -> TemporalTransformer:
    """Temporal transformer with a CLS token: frame features [B,T,D] -> video embedding [B,D]."""
    if ctx.num_frames > cfg.max_frames:
        raise ValueError(f"the data yields {ctx.num_frames} frames per clip but max_frames = "
                         f"{cfg.max_frames}")
    return TemporalTransformer(ctx.embed_dim, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "temporal_transformer", build, config=TemporalTransformerConfig,
                  place="video", test_options=lambda ctx: {"heads": 2, "dim_head": 8})
