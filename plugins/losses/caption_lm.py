"""`caption_lm`: image-grounded language modelling (BLIP's LM, CoCa's caption loss).

The image-grounded text decoder (:class:`~._grounded_text.GroundedTextTransformer`, mode
``decode``: causal self-attention, [Decode] start) reads the caption's token states up to
position t and predicts token t+1; a linear layer maps its states to the vocabulary::

    L = CE_smooth(logits[:, :-1], tokens[:, 1:])   over the non-padding positions

with label smoothing 0.1 (BLIP): ``(1 - eps) CE + eps mean_v(-log p_v)``. The end token is a
label (the decoder learns where a caption stops); padding (``pad_id``, 0 for open_clip's
tokenizer) is ignored. With ``smoothing = 0`` this is the caption term of open_clip's
``CoCaLoss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._grounded_text import GroundedTextTransformer


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
