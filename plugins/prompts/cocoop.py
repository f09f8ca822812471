"""`cocoop` prompt: CoOp's learnable context plus an image-conditioned bias (CoCoOp, Zhou et
al., CVPR 2022).

The prompt of class c for image b is ``[SOT] (ctx_1 + pi_b) .. (ctx_n + pi_b) name_c . [EOT]``
with ``pi_b = meta_net(f_b)``, a Linear-ReLU-Linear network (hidden ``D // 16``) on the
L2-normalised image feature ``f_b`` (the raw CLIP feature by default). The text features are
therefore per image, ``[B,C,D]``: every step runs ``B x C`` prompts through the frozen text
tower -- the price of the method (the benchmark prints it).

The backbone is held by reference (not a submodule), like ``coop``: only the context and the
meta-net are this module's parameters.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Backbone, BuildContext, ImageInputs, PromptOutput, StepContext
from clapkit.text_prompts import (TemplatePrompt, as_image_inputs, context_init,
                                  image_condition, placeholder_prefix, prompt_inputs,
                                  prompt_template)
from clapkit.validators import size


@attrs.frozen
class CoCoOpConfig:
    """``n_ctx``: context vectors (default: the tokens of ``init``, else 4); ``init``: phrase
    whose token embeddings start the context ("" = N(0, ``init_std``^2)); ``hidden_ratio``:
    meta-net hidden width = embed_dim // ratio (16 in the paper); ``condition``: which image
    feature drives the meta-net (``raw`` CLIP feature or the adapted ``z``); ``names``: text
    used for a class name."""

    n_ctx: int | None = attrs.field(default=None, validator=size(75, optional=True))  # CLIP's text context: 77 tokens
    init: str = "a photo of a"
    init_std: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))
    hidden_ratio: int = attrs.field(default=16, validator=size(1_024))
    condition: Literal["raw", "z"] = attrs.field(
        default="raw", validator=attrs.validators.in_(("raw", "z")))
    names: dict[str, str] = attrs.field(factory=dict)


class MetaNet(nn.Sequential):
    """Linear(D, D/r) - ReLU - Linear(D/r, W): image feature -> context bias."""

    def __init__(self, dim: int, width: int, ratio: int) -> None:
        hidden = max(1, dim // ratio)
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))


class CoCoOpPrompt(TemplatePrompt):
    """Per-image text features ``[B,C,D]`` of image-conditioned context prompts."""

    needs_image_features = True

    def __init__(self, backbone: Backbone, texts: list[str], cfg: CoCoOpConfig) -> None:
        super().__init__(backbone)           # held by reference, not a submodule
        n_ctx, init = context_init(backbone, cfg.n_ctx, cfg.init, default=4)
        tpl = prompt_template(backbone, texts, placeholder_prefix(n_ctx), n_ctx)
        width = tpl.embedded.shape[-1]
        ctx = init.clone() if init is not None else torch.randn(n_ctx, width) * cfg.init_std
        self.n_ctx, self.condition = n_ctx, cfg.condition
        self.ctx = nn.Parameter(ctx)
        self.meta_net = MetaNet(backbone.embed_dim, width, cfg.hidden_ratio)
        self.use_template(tpl)

    def context(self, image: ImageInputs) -> torch.Tensor:
        """``[B,n,W]``: the shared context shifted by each image's meta-net bias."""
        f = F.normalize(image_condition(image, self.condition).float(), dim=-1)
        bias = self.meta_net(f.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def forward(self, image: ImageInputs | torch.Tensor | None = None,
                step: StepContext | None = None) -> PromptOutput:
        img = as_image_inputs(image, "cocoop")
        ctx = self.context(img)                                          # [B,n,W]
        b, n = ctx.shape[:2]
        c, length, w = self.embedded.shape
        emb = self.embedded.to(ctx.dtype)
        prompts = torch.cat([emb[None, :, :1].expand(b, c, 1, w),
                             ctx[:, None].expand(b, c, n, w),
                             emb[None, :, 1 + n:].expand(b, c, length - 1 - n, w)], dim=2)
        tokens = self.tokens.unsqueeze(0).expand(b, c, length).reshape(b * c, length)
        text = self.backbone.encode_text_embedded(prompts.reshape(b * c, length, w), tokens)
        return PromptOutput(text=text.reshape(b, c, -1))

    def text_rows(self, batch: int) -> int:
        """Prompts through the text tower per step (for the benchmark)."""
        return batch * self.tokens.shape[0]


def build(cfg: CoCoOpConfig, ctx: BuildContext) -> CoCoOpPrompt:
    """CoOp context + meta-net bias from the image feature (per-image text [B,C,D])."""
    return CoCoOpPrompt(*prompt_inputs(ctx, cfg.names, "cocoop"), cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("prompt", "cocoop", build, config=CoCoOpConfig,
                  test_options=lambda ctx: {"n_ctx": 2, "init": ""})
