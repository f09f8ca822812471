"""`caption_lm`: image-grounded language modelling (BLIP's LM, CoCa's caption loss).

The image-grounded text decoder (:class:`~._grounded_text.GroundedTextTransformer`, mode
``decode``: causal self-attention, [Decode] start) reads the caption's token states up to
position t and predicts token t+1; a linear layer maps its states to the vocabulary::

    L = CE_smooth(logits[:, :-1], tokens[:, 1:])   over the non-padding positions

with label smoothing 0.1 (BLIP): ``(1 - eps) CE + eps mean_v(-log p_v)``. The end token is a
label (the decoder learns where a caption stops); padding (``pad_id``, 0 for open_clip's
tokenizer) is ignored. With ``smoothing = 0`` this is the caption term of open_clip's
``CoCaLoss``.

Output vocabulary (``vocabulary``): ``"tokenizer"`` (BLIP, CoCa) predicts over the whole
tokenizer vocabulary (open_clip's BPE: 49,408 ids). ``"train_captions"`` predicts over the
token ids that occur in the training split's captions only (the start and end tokens
included), as the classic captioning pipelines build their word list from the training set
(NeuralTalk, Show-Attend-Tell): on a small closed caption set the head shrinks from 49,408
rows to the few dozen the captions use, so a step is cheaper and the softmax has nothing
to unlearn. The smoothing then spreads over that vocabulary; a label outside it (a token
no training caption has) is left out of the loss; generation gives every other id -inf.
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

from ._grounded_text import DecoderParts, GroundedTextTransformer
from ._image_text_batch import patch_tokens_need


def caption_lm_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int = 0,
                    smoothing: float = 0.1) -> torch.Tensor:
    """Mean next-token CE of ``logits [B,L,V]`` against ``labels [B,L]``, positions whose
    label is ``pad_id`` ignored, label smoothing ``smoothing``."""
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: "
                         "expected [B,L,V] and [B,L]")
    if not bool((labels != pad_id).any()):
        raise ValueError("every label is padding: no caption token to predict")
    # [B*L, V] rows: the same mean as CE over [B, V, L] without a transposed copy
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=pad_id, label_smoothing=smoothing)


def next_token_split(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``: ``tokens[:, :-1]`` predict ``tokens[:, 1:]``."""
    return tokens[:, :-1], tokens[:, 1:]


class CaptionLmObjective(nn.Module):
    """Decoder pass + vocabulary head + smoothed CE (the decoder is shared with ``itm``)."""

    def __init__(self, decoder: GroundedTextTransformer, vocab_size: int, pad_id: int = 0,
                 smoothing: float = 0.1) -> None:
        super().__init__()
        self.decoder = decoder
        self.lm_head = nn.Linear(decoder.width, vocab_size)
        self.pad_id, self.smoothing = pad_id, smoothing

    def token_logits(self, text: torch.Tensor, pad_mask: torch.Tensor | None,
                     image: torch.Tensor) -> torch.Tensor:
        """``[B,L,V]`` next-token logits from token states ``[B,L,W]`` and image tokens."""
        return self.lm_head(self.decoder.decode(text, pad_mask, image))

    def forward(self, text: torch.Tensor, tokens: torch.Tensor, image: torch.Tensor
                ) -> torch.Tensor:
        """``text [B,L,W]``: the text tower's (causal) states of ``tokens [B,L]``."""
        states, labels = text[:, :-1], tokens[:, 1:]
        pad = tokens[:, :-1] == self.pad_id
        pad[:, 0] = False                                   # the start token is never padding
        real = labels != self.pad_id
        if not bool(real.any()):
            raise ValueError("every label is padding: no caption token to predict")
        # the vocabulary head only where a label counts (captions are mostly padding)
        hidden = self.decoder.decode(states, pad, image)[real]             # [N,W]
        return F.cross_entropy(self.lm_head(hidden).float(), labels[real],
                               label_smoothing=self.smoothing)


# --- the loss plugin -------------------------------------------------------------------------

_v = attrs.validators
DECODERS = ("auto", "coca", "grounded")
VOCABULARIES = ("tokenizer", "train_captions")


@attrs.frozen
class CaptionLmConfig:
    """``smoothing``: label smoothing (BLIP 0.1); ``decoder``: "coca" (the backbone's own
    caption decoder, CoCa), "grounded" (this family's image-grounded decoder) or "auto"
    (coca where the backbone has one); ``share_with``: the recipe name of an ``itm`` loss
    whose grounded transformer this decoder shares (all but self-attention, BLIP; "" = its
    own); ``layers``/``heads``/``image_tokens``: of its own decoder (as ``itm``);
    ``vocab_size``: the tokenizer's vocabulary (open_clip's BPE: 49408); ``vocabulary``:
    what the head predicts over, "tokenizer" (all ids, BLIP) or "train_captions" (the ids
    of the training captions; see the module docstring); ``pad_id``: the
    padding token (open_clip: 0); ``caption_template``: the caption of an item without
    captions."""

    smoothing: float = attrs.field(default=0.1, validator=[_v.ge(0.0), _v.lt(1.0)])
    decoder: str = attrs.field(default="auto", validator=_v.in_(DECODERS))
    share_with: str = ""
    layers: int = attrs.field(default=2, validator=size(48))
    heads: int = attrs.field(default=0, validator=size(128, lo=0))
    image_tokens: str = attrs.field(default="features",
                                    validator=_v.in_(("features", "patches")))
    vocab_size: int = attrs.field(default=49408, validator=size(1_000_000, lo=2))
    vocabulary: str = attrs.field(default="tokenizer", validator=_v.in_(VOCABULARIES))
    pad_id: int = 0
    caption_template: str = "a photo of a {}."


class CaptionLmLoss(Loss):
    """Next-token CE of one caption per item, grounded on the item's image."""

    @property
    def needs(self) -> tuple[str, ...]:             # type: ignore[override]
        """With patch tokens the pipeline's own vision pass provides them."""
        source = "patches" if self.kind == "coca" else self.image_source
        return ("z", "features") + patch_tokens_need(self._backbone[0], source)

    def __init__(self, cfg: CaptionLmConfig, backbone: nn.Module, class_names: list[str],
                 seed: int = 0, train_texts: list[str] | None = None) -> None:
        super().__init__()
        backbone.require("text_tokens", who="caption_lm (token states of the captions)")
        self.cfg, self.class_names = cfg, list(class_names)
        self._backbone = (backbone,)
        has_coca = "text_decoder" in getattr(backbone, "capabilities", ())
        self.kind = ("coca" if has_coca else "grounded") if cfg.decoder == "auto" \
            else cfg.decoder
        if self.kind == "coca":
            backbone.require("text_decoder", who="caption_lm decoder = 'coca'")
        self._shared: tuple[GroundedTextTransformer, ...] = ()
        self.image_source = cfg.image_tokens
        self.decoder: GroundedTextTransformer | None = None
        self.lm_head: nn.Linear | None = None
        self.decoder_parts: DecoderParts | None = None
        self.vocab_ids: torch.Tensor | None
        self.register_buffer("vocab_ids", None)       # the head's ids ("train_captions")
        self.seed = seed
        if self.kind == "grounded":
            width = int(backbone.text_token_width)
            if not cfg.share_with:
                from .itm import _heads, image_width
                self.decoder = GroundedTextTransformer(
                    width, cfg.layers, _heads(width, cfg.heads),
                    image_width(backbone, cfg.image_tokens), False, seed, mode="decode")
            ids = self._vocabulary(backbone, train_texts or [])
            self.register_buffer("vocab_ids", ids, persistent=True)
            self.lm_head = nn.Linear(width, cfg.vocab_size if ids is None else len(ids))
        elif cfg.vocabulary != "tokenizer":
            raise ClapkitError("caption_lm: vocabulary = 'train_captions' needs the grounded "
                               "decoder (CoCa's own decoder predicts over its tokenizer)")

    def _vocabulary(self, backbone: nn.Module, texts: list[str]) -> torch.Tensor | None:
        """The sorted token ids of ``texts`` (``vocabulary = "train_captions"``), else None."""
        if self.cfg.vocabulary == "tokenizer":
            return None
        if not texts:
            raise ClapkitError("caption_lm: vocabulary = 'train_captions' needs a caption "
                               "dataset (its training split has no captions)")
        ids = torch.unique(backbone.tokenize(sorted(set(texts))))
        ids = ids[ids != self.cfg.pad_id]
        if int(ids.max()) >= self.cfg.vocab_size:
            raise ClapkitError(f"caption_lm: token id {int(ids.max())} of a training caption "
                               f"is outside vocab_size = {self.cfg.vocab_size}")
        return ids

    def _full_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits over the head's vocabulary -> over the tokenizer's (-inf elsewhere)."""
        if self.vocab_ids is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.cfg.vocab_size), float("-inf"))
        full[..., self.vocab_ids] = logits
        return full

    def _head_labels(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``labels [N]`` (tokenizer ids) -> (head indices, kept mask): ids outside the
        head's vocabulary are dropped."""
        if self.vocab_ids is None:
            return labels, torch.ones_like(labels, dtype=torch.bool)
        idx = torch.searchsorted(self.vocab_ids, labels).clamp_max(len(self.vocab_ids) - 1)
        return idx, self.vocab_ids[idx] == labels

    def bind(self, pipeline: nn.Module) -> None:
        """``share_with``: borrow that ``itm`` loss's grounded transformer (a reference: its
        parameters stay under ``losses.<share_with>``)."""
        if self.kind != "grounded" or not self.cfg.share_with:
            return
        losses = getattr(pipeline, "losses", {})
        other = losses[self.cfg.share_with] if self.cfg.share_with in losses else None
        encoder = getattr(other, "encoder", None)
        if not isinstance(encoder, GroundedTextTransformer):
            raise ClapkitError(f"caption_lm: share_with = '{self.cfg.share_with}' names no "
                               f"itm loss of this recipe (losses: {', '.join(losses)})")
        self._shared = (encoder,)
        self.image_source = other.cfg.image_tokens
        if encoder.mode == "encode":      # its own [Decode] token and causal self-attention
            self.decoder_parts = DecoderParts(encoder, self.seed).to(
                encoder.ln_final.weight.device)

    def _decoder(self) -> GroundedTextTransformer:
        if self.decoder is not None:
            return self.decoder
        if not self._shared:
            raise ClapkitError("caption_lm shares its decoder but was never bound to the "
                               "pipeline")
        return self._shared[0]

    def next_token_logits(self, states, mask, images) -> torch.Tensor:
        """``[B,L,V]`` logits from text token states ``[B,L,W]`` (position t -> token t+1)."""
        if self.kind == "coca":
            return self._backbone[0].decode_text(images, states)
        return self._full_vocab(self.lm_head(self._decoder().decode(
            states, ~mask, images, self.decoder_parts)))

    def last_token_logits(self, states, mask, images) -> torch.Tensor:
        """``[B,V]``: the logits of the token after the last position only (generation)."""
        if self.kind == "coca":
            return self.next_token_logits(states, mask, images)[:, -1]
        hidden = self._decoder().decode(states, ~mask, images, self.decoder_parts)
        return self._full_vocab(self.lm_head(hidden[:, -1]))

    def forward(self, outputs, batch) -> torch.Tensor:
        from ._image_text_batch import image_tokens, step_captions, text_encoding

        bb = self._backbone[0]
        captions, _ = step_captions(batch, self.class_names, self.cfg.caption_template,
                                    self.training)
        tokens, states = text_encoding(batch, bb, captions, True)
        source = "patches" if self.kind == "coca" else self.image_source
        images = image_tokens(batch, outputs, bb, source)
        tokens = tokens.to(images.device)
        w, mask = states.tokens.to(images.device), states.mask.to(images.device)
        # positions past the longest caption are padding everywhere: never decoded
        n = min(int(mask.sum(1).max()), w.shape[1])
        w, mask, labels = w[:, :n - 1], mask[:, :n - 1], tokens[:, 1:n]
        if self.kind == "coca":
            return caption_lm_loss(self.next_token_logits(w, mask, images), labels,
                                   self.cfg.pad_id, self.cfg.smoothing)
        real = labels != self.cfg.pad_id
        if not bool(real.any()):
            raise ValueError("every label is padding: no caption token to predict")
        # the vocabulary head only where a label counts (as CaptionLmObjective)
        target, known = self._head_labels(labels[real])
        if not bool(known.any()):
            raise ValueError("no caption token of this batch is in the head's vocabulary "
                             "(vocabulary = 'train_captions')")
        hidden = self._decoder().decode(w, ~mask, images, self.decoder_parts)[real][known]
        return F.cross_entropy(self.lm_head(hidden).float(), target[known],
                               label_smoothing=self.cfg.smoothing)


def build(cfg: CaptionLmConfig, ctx: BuildContext) -> CaptionLmLoss:
    """BLIP's captioning LM (image-grounded causal decoder, label smoothing 0.1)."""
    if ctx.backbone is None:
        raise ClapkitError("caption_lm needs the backbone (its text tower reads the captions)")
    return CaptionLmLoss(cfg, ctx.backbone, ctx.class_names, ctx.seed, ctx.train_texts)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "caption_lm", build, config=CaptionLmConfig)
