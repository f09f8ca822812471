"""`vga` (place text): CLAP4CLIP's visual-guided attention (seed 000 section 2).

A transformer decoder whose queries are the class text features (plus the task tokens a
``task_tokens`` adapter before it offers as ``step.queries``) and whose keys/values are the
L2-normalised image features; the adapted text is ``t + VGA(t, z)``, and a task token's
output is added to every class of its task.

``context``:
- ``"per_sample"`` (default): every image conditions only its own copy of the text features
  (memory = that one image), so a prediction never depends on the rest of the batch. Costs
  B decoder passes (one batched call) instead of one.
- ``"per_batch"``: the reference code's behaviour -- one decoder pass whose memory is the
  whole batch; every image gets the same adapted text, returned once as ``[1,C,D]`` (batch
  dim 1 = the same for every image; heads broadcast it).

The self-attention mask is block-diagonal by task: a class attends to the classes of its
own task and to its task's token; a token attends to its task's classes and itself. Only
the seen classes (``step.seen_classes``) are queries; the unseen ones pass through
unchanged. All tasks go through ONE masked decoder call.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import Adapter, BuildContext, StepContext, TextAdapterOutput
from clapkit.validators import size


@attrs.frozen
class VGAConfig:
    """``layers``/``heads``/``ff_dim``/``dropout`` of the decoder (d = embed dim);
    ``context``: "per_sample" (batch-independent) or "per_batch" (reference);
    ``normalize_image``: L2-normalise z before it is used as keys/values (reference: yes)."""

    layers: int = attrs.field(default=1, validator=size(48))
    heads: int = attrs.field(default=1, validator=size(128))
    ff_dim: int = attrs.field(default=2048, validator=size(65_536))
    dropout: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0.0),
                                                         attrs.validators.lt(1.0)])
    context: Literal["per_sample", "per_batch"] = attrs.field(
        default="per_sample", validator=attrs.validators.in_(("per_sample", "per_batch")))
    normalize_image: bool = True


def task_block_mask(ids: torch.Tensor) -> torch.Tensor:
    """``[Q,Q]`` bool attention mask, True = blocked: query i sees key j iff same task."""
    return ids[:, None] != ids[None, :]


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``[N,L,E]`` -> ``[N,h,L,E/h]``."""
    return x.unflatten(-1, (h, -1)).transpose(-2, -3)


def _attend(mha: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            keep: torch.Tensor | None) -> torch.Tensor:
    """Projected ``q [N,L,E]``, ``k, v [N|1,M,E]`` -> ``out_proj(attention)`` ``[N,L,E]``:
    what ``nn.MultiheadAttention`` computes after its in-projection (``keep``: True =
    may attend; attention dropout as the module's)."""
    h = mha.num_heads
    p = mha.dropout if mha.training else 0.0
    n = q.shape[0]
    k, v = _heads(k, h).expand(n, -1, -1, -1), _heads(v, h).expand(n, -1, -1, -1)
    out = F.scaled_dot_product_attention(_heads(q, h), k, v, attn_mask=keep, dropout_p=p)
    return F.linear(out.transpose(-2, -3).flatten(-2), mha.out_proj.weight, mha.out_proj.bias)


def decoder_forward(decoder: nn.TransformerDecoder, parts: list[torch.Tensor], batch: int,
                    mem: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``decoder(cat(parts, -2).expand(batch, ...), mem, tgt_mask=~keep)`` -> ``[batch,Q,D]``
    for post-norm batch-first layers, written out so that the image-independent work is
    done once:

    - the first self-attention's in-projection runs on the shared queries ``parts``
      (``[Q_i,D]`` blocks, e.g. class text then task tokens) before any expand over the
      batch, and per block, so frozen text rows get no input gradient (the tokens do);
    - ``mem [batch|1, M, D]``: keys/values are projected once per memory row.
    Attention and dropout masks stay independent per batch item, as in the module call."""
    x: torch.Tensor | None = None
    for layer in decoder.layers:
        sa, ca = layer.self_attn, layer.multihead_attn
        e = sa.embed_dim
        if x is None:                                   # queries shared by the batch
            qkv = torch.cat([F.linear(t, sa.in_proj_weight, sa.in_proj_bias) for t in parts],
                            dim=-2)[None].expand(batch, -1, -1)
            x = torch.cat(parts, dim=-2)[None]
        else:
            qkv = F.linear(x, sa.in_proj_weight, sa.in_proj_bias)
        q, k, v = qkv.split(e, dim=-1)
        x = layer.norm1(x + layer.dropout1(_attend(sa, q, k, v, keep)))
        w, b = ca.in_proj_weight, ca.in_proj_bias
        q = F.linear(x, w[:e], b[:e])
        k, v = F.linear(mem, w[e:], b[e:]).split(e, dim=-1)
        x = layer.norm2(x + layer.dropout2(_attend(ca, q, k, v, None)))
        ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))
        x = layer.norm3(x + layer.dropout3(ff))
    if decoder.norm is not None:
        x = decoder.norm(x)
    return x


class VGA(Adapter):
    """Text-attends-to-image transformer decoder with a residual add."""

    place = "text"

    def __init__(self, dim: int, cfg: VGAConfig) -> None:
        super().__init__()
        if dim % cfg.heads:
            raise ClapkitError(f"heads: {cfg.heads} does not divide the embed dim {dim}")
        self.context = cfg.context
        self.normalize_image = cfg.normalize_image
        layer = nn.TransformerDecoderLayer(dim, cfg.heads, cfg.ff_dim, cfg.dropout,
                                           activation="gelu", batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)

    def forward(self, text: torch.Tensor, z: torch.Tensor,
                step: StepContext | None = None) -> TextAdapterOutput:
        b = z.shape[0]
        c = text.shape[-2]
        n = step.seen(c) if step is not None else c
        toc = step.task_of_class if step is not None else None
        ids = (toc[:n].to(text.device) if toc is not None
               else torch.zeros(n, dtype=torch.long, device=text.device))
        tokens = step.queries if step is not None else None
        mem = F.normalize(z, dim=-1) if self.normalize_image else z
        per_image = text.dim() == 3 and text.shape[0] > 1 and text.stride(0) != 0
        x = text[..., :n, :]
        if text.dim() == 3 and not per_image:
            x = x[0]                                            # broadcast view: one copy
        n_tasks = int(ids.max()) + 1 if n else 0
        if tokens is not None and n:
            if tokens.shape[0] < n_tasks:
                raise ClapkitError(f"vga: the task tokens offered ({tokens.shape[0]}) do not "
                                   f"cover the {n_tasks} tasks of the seen classes")
            tok = tokens[:n_tasks].to(x.dtype)
            q_ids = torch.cat([ids, torch.arange(n_tasks, device=ids.device)])
            parts = [x, tok.expand(b, *tok.shape) if x.dim() == 3 else tok]
        else:
            q_ids, parts = ids, [x]
        keep = ~task_block_mask(q_ids)
        if self.context == "per_batch" and not per_image:
            out = self._decode(parts, mem[None], keep)[0]                       # [Q,D]
        elif x.dim() == 2:                            # per_sample on batch-shared text
            out = self._decode(parts, mem[:, None, :], keep)                    # [B,Q,D]
        else:                                         # per-image text
            out = self.decoder(torch.cat(parts, dim=-2), mem[:, None, :], tgt_mask=~keep)
        delta = out[..., :n, :]
        if tokens is not None and n:
            delta = delta + out[..., n:, :].index_select(-2, ids)
        adapted = x + delta
        rest = text[..., n:, :]
        if adapted.dim() == 2:                        # per_batch: one copy for the batch
            full = torch.cat([adapted, rest[0] if rest.dim() == 3 else rest], dim=-2)
            return TextAdapterOutput(text=full[None])
        if rest.dim() == 2:
            rest = rest.expand(b, *rest.shape)
        return TextAdapterOutput(text=torch.cat([adapted, rest], dim=-2))


    def _decode(self, parts: list[torch.Tensor], mem: torch.Tensor,
                keep: torch.Tensor) -> torch.Tensor:
        """The decoder on batch-shared queries; ``mem [N,M,D]`` -> ``[N,Q,D]``."""
        return decoder_forward(self.decoder, parts, mem.shape[0], mem, keep)


def build(cfg: VGAConfig, ctx: BuildContext) -> VGA:
    """CLAP4CLIP visual-guided attention: text queries attend to the image (decoder)."""
    return VGA(ctx.embed_dim, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "vga", build, config=VGAConfig, place="text")
