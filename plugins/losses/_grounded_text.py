"""BLIP's image-grounded text transformer, shared by the ``itm`` and ``caption_lm`` losses.

Each block is self-attention -> cross-attention over the image tokens -> feed-forward (the
cross-attention sits between self-attention and the FFN, as BLIP inserts it into every text
block). It runs on top of the backbone's *unimodal* text token states (open_clip's text
tower is causal, so position t of its output has seen tokens <= t only -- the decoder may
read it without seeing the future, as CoCa's multimodal decoder does):

* :meth:`GroundedTextTransformer.encode` (ITM): a learned **[Encode]** token is put in front
  of the text, self-attention is bidirectional (padding masked); its output is the
  multimodal representation of the pair, ``[B, W]``.
* :meth:`GroundedTextTransformer.decode` (LM): causal self-attention, a learned **[Decode]**
  embedding added at the start position (the start token), ``[B, L, W]`` states whose
  position t predicts token t+1 (the tokenizer's end token ends the caption).

Encoder and decoder share every parameter except the self-attention layers (BLIP);
``share_self_attention = True`` shares those too. ``mode`` builds only what is used:
"both" (encoder and decoder in one module), "encode" (ITM alone: no [Decode] token, no
causal self-attention) or "decode" (a caption decoder of its own: its self-attention is the
causal one, no [Encode] token). A decoder that borrows an "encode" transformer brings its
own :class:`DecoderParts` (the [Decode] token and, unless shared, causal self-attention).
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("both", "encode", "decode")


class GroundedBlock(nn.Module):
    """Self-attention (per mode) -> cross-attention to the image -> MLP, pre-norm residuals."""

    def __init__(self, width: int, heads: int, image_width: int,
                 share_self_attention: bool = False, mlp_ratio: float = 4.0,
                 mode: str = "both") -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.self_attn_decode = (None if share_self_attention or mode != "both"
                                 else nn.MultiheadAttention(width, heads, batch_first=True))
        self.ln_cross = nn.LayerNorm(width)
        self.ln_image = nn.LayerNorm(image_width)
        self.cross_attn = nn.MultiheadAttention(width, heads, kdim=image_width,
                                                vdim=image_width, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, image: torch.Tensor, causal: bool,
                pad_mask: torch.Tensor | None,
                causal_attn: nn.MultiheadAttention | None = None) -> torch.Tensor:
        attn = self.self_attn
        if causal:
            attn = causal_attn if causal_attn is not None else (
                self.self_attn_decode if self.self_attn_decode is not None else self.self_attn)
        mask = None
        if causal:
            n = x.shape[1]
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        h = self.ln_self(x)
        x = x + attn(h, h, h, attn_mask=mask, key_padding_mask=pad_mask,
                     need_weights=False)[0]
        img = self.ln_image(image)
        x = x + self.cross_attn(self.ln_cross(x), img, img, need_weights=False)[0]
        return x + self.mlp(self.ln_mlp(x))


class GroundedTextTransformer(nn.Module):
    """Text token states ``[B,L,W]`` + image tokens ``[B,N,Wv]`` -> grounded states."""

    def __init__(self, width: int, layers: int, heads: int, image_width: int,
                 share_self_attention: bool = False, seed: int = 0,
                 mode: str = "both") -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}; allowed: {', '.join(MODES)}")
        self.width, self.image_width, self.mode = width, image_width, mode
        self.share_self_attention = share_self_attention
        self.blocks = nn.ModuleList(GroundedBlock(width, heads, image_width,
                                                  share_self_attention, mode=mode)
                                    for _ in range(layers))
        g = torch.Generator().manual_seed(seed)
        self.encode_token = self.decode_token = None
        if mode != "decode":
            self.encode_token = nn.Parameter(torch.randn(width, generator=g) * 0.02)  # [Encode]
        if mode != "encode":
            self.decode_token = nn.Parameter(torch.randn(width, generator=g) * 0.02)  # [Decode]
        self.ln_final = nn.LayerNorm(width)

    @property
    def heads(self) -> int:
        return int(self.blocks[0].self_attn.num_heads)

    def _check(self, text: torch.Tensor, image: torch.Tensor) -> None:
        if text.dim() != 3 or text.shape[-1] != self.width:
            raise ValueError(f"text states of shape {tuple(text.shape)}, expected "
                             f"[B, L, {self.width}]")
        if image.dim() != 3 or image.shape[-1] != self.image_width \
                or image.shape[0] != text.shape[0]:
            raise ValueError(f"image tokens of shape {tuple(image.shape)}, expected "
                             f"[{text.shape[0]}, N, {self.image_width}]")

    def _run(self, x, image, causal, pad_mask, causal_attn=None):
        dtype = self.ln_final.weight.dtype      # inputs in the module's dtype (bf16 runs)
        x, image = x.to(dtype), image.to(dtype)
        for i, blk in enumerate(self.blocks):
            x = blk(x, image, causal, pad_mask,
                    None if causal_attn is None else causal_attn[i])
        return self.ln_final(x)

    def encode(self, text: torch.Tensor, pad_mask: torch.Tensor | None,
               image: torch.Tensor) -> torch.Tensor:
        """The [Encode] output ``[B,W]`` of each (text, image) pair; ``pad_mask [B,L]`` is
        True at padding."""
        self._check(text, image)
        if self.encode_token is None:
            raise ValueError("this grounded transformer was built as a decoder only "
                             "(mode 'decode'): it has no [Encode] token")
        enc = self.encode_token.to(text.dtype).expand(text.shape[0], 1, -1)
        x = torch.cat([enc, text], 1)
        if pad_mask is not None:
            pad_mask = torch.cat([pad_mask.new_zeros(pad_mask.shape[0], 1), pad_mask], 1)
        return self._run(x, image, False, pad_mask)[:, 0]

    def decode(self, text: torch.Tensor, pad_mask: torch.Tensor | None,
               image: torch.Tensor, parts: DecoderParts | None = None) -> torch.Tensor:
        """Causal grounded states ``[B,L,W]`` (position t sees text positions <= t);
        ``parts``: a borrowing decoder's own [Decode] token and causal self-attention."""
        self._check(text, image)
        token = parts.decode_token if parts is not None else self.decode_token
        if token is None:
            raise ValueError("this grounded transformer was built as an encoder only "
                             "(mode 'encode'): decoding needs the decoder's DecoderParts")
        if parts is None and self.mode == "encode" and not self.share_self_attention:
            raise ValueError("an encoder-only transformer decodes with DecoderParts")
        x = torch.cat([text[:, :1] + token.to(text.dtype), text[:, 1:]], 1)
        return self._run(x, image, True, pad_mask,
                         None if parts is None else parts.self_attn)


class DecoderParts(nn.Module):
    """What a decoder sharing an encoder's grounded transformer owns (BLIP: all but
    self-attention is shared): the [Decode] token and one causal self-attention per block
    (none when the encoder was built with ``share_self_attention``)."""

    def __init__(self, encoder: GroundedTextTransformer, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed + 1)
        w = encoder.width
        self.decode_token = nn.Parameter(torch.randn(w, generator=g) * 0.02)
        self.self_attn = None if encoder.share_self_attention else nn.ModuleList(
            nn.MultiheadAttention(w, encoder.heads, batch_first=True) for _ in encoder.blocks)
