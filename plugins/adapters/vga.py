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


@attrs.frozen
class VGAConfig:
    """``layers``/``heads``/``ff_dim``/``dropout`` of the decoder (d = embed dim);
    ``context``: "per_sample" (batch-independent) or "per_batch" (reference);
    ``normalize_image``: L2-normalise z before it is used as keys/values (reference: yes)."""

    layers: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    heads: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    ff_dim: int = attrs.field(default=2048, validator=attrs.validators.gt(0))
    dropout: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0.0),
                                                         attrs.validators.lt(1.0)])
    context: Literal["per_sample", "per_batch"] = attrs.field(
        default="per_sample", validator=attrs.validators.in_(("per_sample", "per_batch")))
    normalize_image: bool = True


def task_block_mask(ids: torch.Tensor) -> torch.Tensor:
    """``[Q,Q]`` bool attention mask, True = blocked: query i sees key j iff same task."""
    return ids[:, None] != ids[None, :]


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
            tok = tok.expand(b, *tok.shape) if x.dim() == 3 else tok
            queries = torch.cat([x, tok], dim=-2)
        else:
            q_ids, queries = ids, x
        mask = task_block_mask(q_ids)
        if self.context == "per_batch" and not per_image:
            out = self.decoder(queries[None], mem[None], tgt_mask=mask)[0]     # [Q,D]
        else:
            if queries.dim() == 2:
                queries = queries.expand(b, *queries.shape)
            out = self.decoder(queries, mem[:, None, :], tgt_mask=mask)       # [B,Q,D]
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


def build(cfg: VGAConfig, ctx: BuildContext) -> VGA:
    """CLAP4CLIP visual-guided attention: text queries attend to the image (decoder)."""
    return VGA(ctx.embed_dim, cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "vga", build, config=VGAConfig, place="text")
