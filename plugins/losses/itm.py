"""`itm`: image-text matching with hard negatives (BLIP's ITM).

The image-grounded text encoder (:class:`~._grounded_text.GroundedTextTransformer`, mode
``encode``) fuses a caption with the image tokens; a linear layer on its **[Encode]** output
classifies the pair as matching (1) or not (0). Per batch: the ``B`` positive pairs, for each
image one negative caption and for each caption one negative image::

    L = CE(head(enc(t_b, I_b)), 1) + CE(head(enc(t_neg(b), I_b)), 0) + CE(head(enc(t_b,
        I_neg(b))), 0)     (mean over the 3B pairs)

**Hard negative mining**: the negative caption of image ``i`` is drawn from
``softmax(s v_i t^T)`` over the batch with every caption of the *same image id* masked out
(a duplicate image id is a positive, never a negative), so more similar -- harder --
captions are chosen more often; likewise for the negative image of a caption. A row whose
every column shares its image id has no negative: it is left out (``valid`` is False).

:func:`sample_hard_negatives` draws all rows at once (one ``torch.multinomial`` call);
:func:`sample_hard_negatives_naive` is the per-row loop of the reference code, kept for the
benchmark and as the test's reference distribution.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext, Loss
from clapkit.validators import size

from ._grounded_text import GroundedTextTransformer
from ._image_text_batch import patch_tokens_need


def negative_weights(sim: torch.Tensor, row_ids: torch.Tensor, col_ids: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights [R,K], valid [R])``: softmax of the similarities over the columns of a
    *different* image id (positives get weight 0); rows with no such column are not valid
    (their weights are uniform placeholders, never to be used)."""
    if sim.shape != (row_ids.shape[0], col_ids.shape[0]):
        raise ValueError(f"similarities {tuple(sim.shape)} for {row_ids.shape[0]} rows and "
                         f"{col_ids.shape[0]} columns")
    same = row_ids[:, None] == col_ids[None, :]
    valid = ~same.all(1)
    logits = sim.detach().float().masked_fill(same, float("-inf"))
    logits[~valid] = 0.0
    return torch.softmax(logits, dim=1), valid


def sample_hard_negatives(sim: torch.Tensor, row_ids: torch.Tensor, col_ids: torch.Tensor,
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative column per row, drawn from :func:`negative_weights` (vectorised):
    ``(index [R], valid [R])``."""
    w, valid = negative_weights(sim, row_ids, col_ids)
    idx = torch.multinomial(w, 1, generator=generator).squeeze(1)
    return idx, valid


def sample_hard_negatives_naive(sim: torch.Tensor, row_ids: torch.Tensor,
                                col_ids: torch.Tensor, generator: torch.Generator | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same draw row by row (a softmax and a multinomial per row, as BLIP's loop)."""
    idx, valid = [], []
    for r in range(sim.shape[0]):
        neg = row_ids[r] != col_ids
        if not bool(neg.any()):
            idx.append(0)
            valid.append(False)
            continue
        w = torch.softmax(sim[r].detach().float(), 0).masked_fill(~neg, 0.0)
        idx.append(int(torch.multinomial(w, 1, generator=generator)))
        valid.append(True)
    return torch.tensor(idx, dtype=torch.long), torch.tensor(valid)


class ItmObjective(nn.Module):
    """ITM head + loss over a grounded text encoder (shared with ``caption_lm``)."""

    def __init__(self, encoder: GroundedTextTransformer, sampler=None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.width, 2)
        #: ``(sim, row_ids, col_ids, generator) -> (index, valid)``: how negatives are drawn
        self.sampler = sampler or sample_hard_negatives

    def match_logits(self, text: torch.Tensor, pad_mask: torch.Tensor | None,
                     image: torch.Tensor) -> torch.Tensor:
        """``[B,2]`` (no match, match) logits of aligned (text, image) pairs."""
        return self.head(self.encoder.encode(text, pad_mask, image))

    def forward(self, text: torch.Tensor, pad_mask: torch.Tensor | None, image: torch.Tensor,
                sim_i2t: torch.Tensor, ids: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``text [B,L,W]`` token states, ``image [B,N,Wv]`` tokens, ``sim_i2t [B,B]`` ITC
        similarities (image rows, caption columns; only read without gradient), ``ids [B]``
        image id codes of the rows."""
        neg_text, ok_t = self.sampler(sim_i2t, ids, ids, generator)      # per image
        neg_image, ok_i = self.sampler(sim_i2t.t(), ids, ids, generator)  # per text
        rows = torch.arange(text.shape[0], device=text.device)
        ti = torch.cat([rows, neg_text[ok_t].to(rows.device), rows[ok_i.to(rows.device)]])
        ii = torch.cat([rows, rows[ok_t.to(rows.device)], neg_image[ok_i].to(rows.device)])
        labels = torch.cat([torch.ones_like(rows), torch.zeros(len(ti) - len(rows),
                                                               dtype=torch.long,
                                                               device=rows.device)])
        mask = pad_mask[ti] if pad_mask is not None else None
        logits = self.match_logits(text[ti], mask, image[ii])
        return F.cross_entropy(logits.float(), labels)


# --- the loss plugin -------------------------------------------------------------------------

_v = attrs.validators


def _heads(width: int, heads: int) -> int:
    return heads or max(1, width // 64)


@attrs.frozen
class ItmConfig:
    """``layers``/``heads`` of the image-grounded text encoder on top of the text tower
    (heads 0 = width / 64); ``share_self_attention``: one self-attention for encoder and
    decoder (BLIP keeps them apart); ``image_tokens``: what the cross-attention reads,
    "features" (the pooled per-stream, per-frame features: works with the feature cache) or
    "patches" (the vision tower's token output, BLIP; needs pixels); ``caption_template``:
    the caption of an item without captions."""

    layers: int = attrs.field(default=2, validator=size(48))
    heads: int = attrs.field(default=0, validator=size(128, lo=0))
    share_self_attention: bool = False
    image_tokens: str = attrs.field(default="features",
                                    validator=_v.in_(("features", "patches")))
    caption_template: str = "a photo of a {}."


def image_width(backbone: nn.Module, source: str) -> int:
    if source == "patches":
        backbone.require("image_tokens", who="image_tokens = 'patches'")
        return int(backbone.image_token_width)
    return int(backbone.embed_dim)


class ItmLoss(Loss):
    """Image-text matching with hard negatives (see the module docstring)."""

    @property
    def needs(self) -> tuple[str, ...]:             # type: ignore[override]
        """With patch tokens the pipeline's own vision pass provides them."""
        return ("z", "features") + patch_tokens_need(self._backbone[0], self.cfg.image_tokens)

    def __init__(self, cfg: ItmConfig, backbone: nn.Module, class_names: list[str],
                 seed: int = 0) -> None:
        super().__init__()
        backbone.require("text_tokens", who="itm (token states of the captions)")
        self.cfg, self.class_names = cfg, list(class_names)
        self._backbone = (backbone,)
        width = int(backbone.text_token_width)
        encoder = GroundedTextTransformer(width, cfg.layers, _heads(width, cfg.heads),
                                          image_width(backbone, cfg.image_tokens),
                                          cfg.share_self_attention, seed, mode="encode")
        self.objective = ItmObjective(encoder)
        self.seed = seed

    @property
    def encoder(self) -> GroundedTextTransformer:
        return self.objective.encoder

    def forward(self, outputs, batch) -> torch.Tensor:
        from ._image_text_batch import image_tokens, step_captions, text_encoding

        bb = self._backbone[0]
        captions, ids = step_captions(batch, self.class_names, self.cfg.caption_template,
                                      self.training)
        _, states = text_encoding(batch, bb, captions, True)
        images = image_tokens(batch, outputs, bb, self.cfg.image_tokens)
        z = outputs["z"]
        with torch.no_grad():
            sim = bb.logit_scale * F.normalize(z.float(), dim=-1) @ F.normalize(
                states.pooled.float().to(z.device), dim=-1).t()
        # reproducible draws: one generator per step, seeded by the run seed, epoch and items
        g = torch.Generator().manual_seed(hash((self.seed, int(batch.get("epoch", 0)),
                                                tuple(batch["index"].tolist())
                                                if "index" in batch else ())) % (2 ** 62))
        w = states.tokens.to(images.device)
        return self.objective(w, ~states.mask.to(images.device), images, sim.cpu(),
                              ids.cpu(), g)


def build(cfg: ItmConfig, ctx: BuildContext) -> ItmLoss:
    """BLIP's image-text matching: grounded [Encode] head, hard negatives from ITC."""
    if ctx.backbone is None:
        raise ClapkitError("itm needs the backbone (its towers encode captions and images)")
    return ItmLoss(cfg, ctx.backbone, ctx.class_names, ctx.seed)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "itm", build, config=ItmConfig)
