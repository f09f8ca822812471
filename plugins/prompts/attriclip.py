"""`attriclip` prompt: an attribute bank of (key, prompt) pairs selected per image (AttriCLIP,
Wang et al., CVPR 2023).

The bank holds ``M`` keys ``[M,D]`` (in the image embedding space) and ``M`` prompts
``[M,L,W]`` (``L`` text-token vectors each). For every image, the ``top_k`` keys of highest
score against its L2-normalised image feature ``f`` are selected; the score is ``f . key``
with the keys *unnormalised* (``match = "dot"``, the reference's ``image_features @
text_key.t()``) or the cosine (``"cosine"``). The chosen prompts, concatenated in rank order
(highest score first, ``order = "rank"``, the reference's ``text_prompt[indices]``; or sorted
into bank order, ``"bank"``, so that a set of attributes is one prompt), form the text context
of every class: ``[SOT] P_i1 .. P_ik name_c . [EOT]``. The text features are per image
``[B,C,D]``.

Cost: images sharing a selection share its prompts, so each *distinct* selection in the batch
is encoded once (``U x C`` text-tower rows for ``U`` distinct selections, not ``B x C``), plus
the ``M`` bank prompts encoded alone for the orthogonality loss.

The bank is shared by all tasks (a continual-learning method with no replay memory); the two
extra losses of the paper read the declared aux outputs: ``query`` (the conditioning image
features ``[B,D]``) with ``selected_keys`` ``[B,k,D]`` (key matching, ``attriclip_key_match``),
and ``bank_text`` ``[M,D]``, the text features of every bank prompt alone (the reference's
``only_prefix``: ``[SOT] P_i x .. x . [EOT]`` from the placeholder string of ``k * L`` ``x``
and a full stop, its first ``L`` placeholders replaced), or the raw ``bank_prompts``
``[M,L,W]`` (prompt orthogonality, ``attriclip_ortho``). ``test_attriclip_parity.py``
rebuilds the reference's selection, prompts and losses.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Backbone, BuildContext, ImageInputs, PromptOutput, StepContext
from clapkit.text_prompts import (TemplatePrompt, as_image_inputs, image_condition,
                                  placeholder_prefix, prompt_inputs, prompt_template)
from clapkit.validators import size


@attrs.frozen
class AttriClipConfig:
    """``bank_size`` M (10), ``prompt_length`` L tokens per attribute prompt (12), ``top_k``
    attributes per image (3; 0 = plain ``"<class>."`` prompts); ``init_std`` of keys and
    prompts; ``condition``: the feature matched against the keys (``raw`` CLIP feature; or
    the adapted ``z``, the head's feature); ``match``: ``dot`` (normalised feature . raw key)
    or ``cosine``; ``order``: the selected prompts concatenated by ``rank`` or in ``bank``
    order; ``names``: class name texts."""

    bank_size: int = attrs.field(default=10, validator=size(10_000))
    prompt_length: int = attrs.field(default=12, validator=size(75))  # 77-token context
    top_k: int = attrs.field(default=3, validator=size(10_000, lo=0))
    init_std: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))
    condition: str = attrs.field(default="raw", validator=attrs.validators.in_(("raw", "z")))
    match: Literal["dot", "cosine"] = attrs.field(
        default="dot", validator=attrs.validators.in_(("dot", "cosine")))
    order: Literal["rank", "bank"] = attrs.field(
        default="rank", validator=attrs.validators.in_(("rank", "bank")))
    names: dict[str, str] = attrs.field(factory=dict)

    @top_k.validator
    def _k_fits(self, attribute: attrs.Attribute, value: int) -> None:
        if value > self.bank_size:
            raise ValueError(f"top_k = {value} is larger than bank_size = {self.bank_size}")


class AttriClipPrompt(TemplatePrompt):
    """Per-image text features ``[B,C,D]`` from the top-k attribute prompts of each image."""

    needs_image_features = True
    aux_keys = ("query", "selected_keys", "selection", "bank_prompts", "bank_text")

    def __init__(self, backbone: Backbone, texts: list[str], cfg: AttriClipConfig) -> None:
        super().__init__(backbone)           # held by reference, not a submodule
        self.top_k, self.length, self.condition = cfg.top_k, cfg.prompt_length, cfg.condition
        self.match, self.order = cfg.match, cfg.order
        n = cfg.top_k * cfg.prompt_length
        tpl = prompt_template(backbone, texts, placeholder_prefix(n), n)
        width = tpl.embedded.shape[-1]
        self.keys = nn.Parameter(torch.randn(cfg.bank_size, backbone.embed_dim) * cfg.init_std)
        self.prompts = nn.Parameter(torch.randn(cfg.bank_size, cfg.prompt_length, width)
                                    * cfg.init_std)
        self.use_template(tpl)
        bank_tokens = bank_template(backbone, max(cfg.top_k, 1) * cfg.prompt_length)
        self.register_buffer("bank_tokens", bank_tokens, persistent=False)
        self.last_rows = 0

    def select(self, query: torch.Tensor) -> torch.Tensor:
        """``[B,k]`` bank indices: the k keys of highest score (``match``) against each
        L2-normalised query, by rank (``order = "rank"``) or sorted (``"bank"``)."""
        keys = self.keys.float()
        if self.match == "cosine":
            keys = F.normalize(keys, dim=-1)
        sim = F.normalize(query.float(), dim=-1) @ keys.t()
        idx = sim.topk(self.top_k, dim=-1).indices
        return idx.sort(dim=-1).values if self.order == "bank" else idx

    def encode_bank(self) -> torch.Tensor:
        """``[M,D]`` text features of every bank prompt alone: ``[SOT] P_i`` followed by the
        rest of the placeholder string (``(k-1) L`` placeholders, full stop, EOT)."""
        m, length, w = self.prompts.shape
        tokens = self.bank_tokens
        with torch.no_grad():
            emb = self.backbone.token_embedding(tokens).to(self.prompts.dtype)   # [1,T,W]
        rows = torch.cat([emb[:, :1].expand(m, 1, w), self.prompts,
                          emb[:, 1 + length:].expand(m, -1, w)], dim=1)
        return self.backbone.encode_text_embedded(rows, tokens.expand(m, -1))

    def encode_selections(self, selections: torch.Tensor) -> torch.Tensor:
        """``[U,C,D]`` text features of ``U`` distinct selections ``[U,k]``."""
        u = selections.shape[0]
        c, length, w = self.embedded.shape
        n = self.top_k * self.length
        ctx = self.prompts[selections].reshape(u, n, w)                 # [U,n,W]
        emb = self.embedded.to(ctx.dtype)
        rows = torch.cat([emb[None, :, :1].expand(u, c, 1, w),
                          ctx[:, None].expand(u, c, n, w),
                          emb[None, :, 1 + n:].expand(u, c, length - 1 - n, w)], dim=2)
        tokens = self.tokens.unsqueeze(0).expand(u, c, length).reshape(u * c, length)
        self.last_rows = u * c
        return self.backbone.encode_text_embedded(rows.reshape(u * c, length, w),
                                                  tokens).reshape(u, c, -1)

    def forward(self, image: ImageInputs | torch.Tensor | None = None,
                step: StepContext | None = None) -> PromptOutput:
        img = as_image_inputs(image, "attriclip")
        query = image_condition(img, self.condition).float()
        b = query.shape[0]
        sel = self.select(query)                                         # [B,k]
        if self.top_k == 0:                  # one (empty) selection shared by every image
            distinct = sel[:1]
            inverse = torch.zeros(b, dtype=torch.long, device=sel.device)
        else:
            distinct, inverse = torch.unique(sel, dim=0, return_inverse=True)
        text = self.encode_selections(distinct)[inverse]                 # [B,C,D]
        bank_text = self.encode_bank()                                   # [M,D]
        self.last_rows += bank_text.shape[0]
        aux = {"query": query, "selected_keys": self.keys[sel],          # [B,k,D]
               "selection": sel, "bank_prompts": self.prompts, "bank_text": bank_text}
        assert text.shape[0] == b
        return PromptOutput(text=text, aux=aux)

    def text_rows(self, batch: int) -> int:
        """Text-tower rows of the last forward (distinct selections x classes, plus the M
        bank prompts)."""
        return self.last_rows


def bank_template(backbone: Backbone, n: int) -> torch.Tensor:
    """``[1,T]`` tokens of the reference's bank-prompt string: ``n`` placeholders and a full
    stop (``"x x .. x."``)."""
    with torch.no_grad():
        return backbone.tokenize([" ".join(["x"] * n) + "."]).cpu()


def build(cfg: AttriClipConfig, ctx: BuildContext) -> AttriClipPrompt:
    """Attribute bank: top-k keys by image similarity select prompts (per-image [B,C,D])."""
    return AttriClipPrompt(*prompt_inputs(ctx, cfg.names, "attriclip"), cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("prompt", "attriclip", build, config=AttriClipConfig,
                  test_options=lambda ctx: {"bank_size": 4, "prompt_length": 2, "top_k": 2})
