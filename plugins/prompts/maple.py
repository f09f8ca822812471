"""`maple` prompt: multi-modal deep prompts in both towers (MaPLe, Khattak et al., CVPR 2023).

Text: the class prompt is ``<ctx_init> <class text>.``; its first ``n_ctx`` tokens after SOT
are learnable vectors (initialised from the phrase's own token embeddings, so at init the
prompt reads exactly ``"a photo of a <class>."``; or N(0, 0.02^2) with ``ctx_init = ""``).
In text blocks ``1 .. depth-1`` fresh learnable prompts replace the previous block's prompt
outputs; from block ``depth`` on they pass through.

Vision: coupled prompts. For every layer ``j < depth`` the vision prompt is
``Linear_j(text prompt j)`` (``text_width -> vision_width``, one projection per layer), appended
after the patch tokens at the input and replaced before block j, stripped before pooling.
``Linear_0`` has its own initialisation; the deeper ``Linear_1 .. Linear_{depth-1}`` start as
copies of one freshly initialised layer (``deep_proj_init = "cloned"``, the reference's
``_get_clones``; ``test_maple_init.py``) or each from its own draw (``"independent"``).

Initialisation phrase: the first ``n_ctx`` tokens of ``ctx_init`` start the first-layer text
prompt; ``n_ctx`` larger than the phrase's token count is an error. The reference code uses
the phrase only for ``n_ctx <= 4`` and otherwise silently starts from random vectors and
``"X"`` placeholders in place of the phrase: clapkit keeps the phrase whenever it has enough
tokens, and ``ctx_init = ""`` is the reference's random start (docs/fidelity.md).

Widths and depths come from the backbone (``text_width``, ``vision_width``, ``text_layers``,
``vision_layers``): any open_clip ViT CLIP works; ``depth`` larger than either tower is an
error naming both depths. The backbone's weights stay frozen (held by reference, not a
submodule); ``changes_image_encoder`` makes the engine encode pixels every step instead of
reading cached features.
"""

from __future__ import annotations

import copy
from typing import Literal

import attrs
import torch
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import Backbone, BuildContext, ImageInputs, PromptOutput, StepContext
from clapkit.text_prompts import (TemplatePrompt, phrase_tokens, placeholder_prefix,
                                  prompt_inputs, prompt_template)
from clapkit.validators import size


@attrs.frozen
class MapleConfig:
    """``n_ctx``: learnable prompt tokens per layer (2); ``depth``: layers J that get prompts
    (9 in the paper, at most the depth of both towers); ``ctx_init``: phrase the first-layer
    text prompt starts from and that precedes the class name ("" = random, ``n_ctx``
    placeholders); ``init_std``: std of the random prompts; ``deep_proj_init``: the deeper
    layers' text->vision projections start as copies of one layer (``cloned``, as the
    reference) or independently initialised (``independent``); ``names``: class name texts."""

    n_ctx: int = attrs.field(default=2, validator=size(75))  # CLIP's text context: 77 tokens
    depth: int = attrs.field(default=9, validator=size(64))   # at most the encoders' layers
    ctx_init: str = "a photo of a"
    init_std: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))
    deep_proj_init: Literal["cloned", "independent"] = attrs.field(
        default="cloned", validator=attrs.validators.in_(("cloned", "independent")))
    names: dict[str, str] = attrs.field(factory=dict)


def check_depth(depth: int, backbone: Backbone, model: str) -> None:
    """MaPLe's J must fit both towers (the published code silently assumes 12 layers)."""
    limit = min(backbone.text_layers, backbone.vision_layers)
    if depth > limit:
        raise ClapkitError(f"depth = {depth} but {model} has {backbone.text_layers} text and "
                           f"{backbone.vision_layers} vision blocks; depth must be 1..{limit}")


def deep_projections(wt: int, wv: int, count: int, init: str) -> list[nn.Linear]:
    """``count`` projections ``Linear(wt, wv)`` for layers ``1 ..``: deep copies of one
    initialised layer (``cloned``) or ``count`` independent initialisations."""
    if init == "independent":
        return [nn.Linear(wt, wv) for _ in range(count)]
    single = nn.Linear(wt, wv)
    return [copy.deepcopy(single) for _ in range(count)]


class MaplePrompt(TemplatePrompt):
    """Text features ``[C,D]`` from deep text prompts; coupled deep vision prompts."""

    changes_image_encoder = True
    aux_keys = ("vision_prompts",)

    def __init__(self, backbone: Backbone, texts: list[str], cfg: MapleConfig,
                 model: str = "the backbone") -> None:
        super().__init__(backbone)           # held by reference, not a submodule (frozen)
        check_depth(cfg.depth, backbone, model)
        n = cfg.n_ctx
        wt, wv = backbone.text_width, backbone.vision_width
        if cfg.ctx_init.strip():
            n_init, vectors = phrase_tokens(backbone, cfg.ctx_init)
            if n > n_init:
                raise ClapkitError(f"n_ctx = {n} but ctx_init {cfg.ctx_init!r} has only "
                                   f"{n_init} tokens; use n_ctx <= {n_init}, or ctx_init = \"\" "
                                   "for random prompts (what the reference code silently does "
                                   "for n_ctx > 4)")
            prefix, n_prefix, first = cfg.ctx_init.strip(), n_init, vectors[:n].clone()
        else:
            prefix, n_prefix = placeholder_prefix(n), n
            first = torch.randn(n, wt) * cfg.init_std
        tpl = prompt_template(backbone, texts, prefix, n_prefix)
        self.n_ctx, self.depth = n, cfg.depth
        self.ctx = nn.Parameter(first)                                   # layer 0 [n,Wt]
        self.deep_text = nn.ParameterList(
            [nn.Parameter(torch.randn(n, wt) * cfg.init_std) for _ in range(cfg.depth - 1)])
        self.proj = nn.ModuleList([nn.Linear(wt, wv), *deep_projections(
            wt, wv, cfg.depth - 1, cfg.deep_proj_init)])
        self.use_template(tpl)

    def text_prompts(self) -> list[torch.Tensor]:
        """``[n,Wt]`` per layer ``0..depth-1`` (entry j feeds text block j)."""
        return [self.ctx, *self.deep_text]

    def vision_prompts(self) -> list[torch.Tensor]:
        """``[n,Wv]`` per layer: ``Linear_j`` of text prompt j (the coupling)."""
        return [proj(p) for proj, p in zip(self.proj, self.text_prompts())]

    def forward(self, image: ImageInputs | torch.Tensor | None = None,
                step: StepContext | None = None) -> PromptOutput:
        text = self.backbone.encode_text_embedded(self.embedded.to(self.ctx.dtype),
                                                  self.tokens, self.text_prompts())
        # the coupled vision prompts [J,n,Wv] (what the image tower receives), for losses
        # and inspection; the pipeline reads them through vision_prompts()
        return PromptOutput(text=text, aux={"vision_prompts": torch.stack(
            self.vision_prompts())})

    def text_rows(self, batch: int) -> int:
        return self.tokens.shape[0]


def build(cfg: MapleConfig, ctx: BuildContext) -> MaplePrompt:
    """Deep multi-modal prompts in the first J layers of both towers (text -> vision)."""
    backbone, texts = prompt_inputs(ctx, cfg.names, "maple")
    model = getattr(getattr(backbone, "cfg", None), "model", None)
    return MaplePrompt(backbone, texts, cfg,
                       model=f"model '{model}'" if model else "the backbone")


@hookimpl
def clapkit_register(registrar):
    registrar.add("prompt", "maple", build, config=MapleConfig,
                  test_options=lambda ctx: {"depth": 2})
