"""`coop` prompt: learnable context vectors in the text tower's input (CoOp, Zhou et al. 2022;
the learnable "soft" view t_soft of the enhanced CLIP-CAER, seed 002 section 4).

The prompt of class c is ``[SOT] ctx_1..ctx_n name_c . [EOT]`` (``position = "end"``), or
``[SOT] name_c ctx . [EOT]`` (``front``), or ``[SOT] ctx_1..ctx_n/2 name_c ctx_n/2+1.. . [EOT]``
(``middle``). The context is shared by all classes or one per class (``class_specific``), and
starts from the token embeddings of a phrase (``init``) or from N(0, 0.02^2).

For ``front`` / ``middle`` the name spans the first ``k_c`` tokens after the placeholder
context, ``k_c`` being the token count of the class text tokenised *alone* (the reference's
``name_lens``). The placeholder prompt ``"X .. X <name>."`` is tokenised as one string, so a
name ending in punctuation (``"jeep (car)"``) merges its last character with the full stop
into one BPE token (``").``"); that merged token then counts as the name's last token and no
separate full stop remains (``test_coop_punctuation.py`` compares this with the prompt string
``"X X X X jeep (car)."`` tokenised by open_clip).

Only the context is a parameter of this module. The backbone is held by reference outside the
module tree (so its weights are neither registered twice nor unfrozen by a ``prompts.*`` stage
glob); gradients still flow through its frozen text tower to the context. Every layout keeps
the total length, so the EOT position -- where the tower pools -- is the one in the tokens of
the placeholder prompt, and the arrangement is a single precomputed gather (no loop over
classes in ``forward``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs
import torch
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import (Backbone, BuildContext, ImageInputs, PromptOutput,
                                StepContext)
from clapkit.text_prompts import (TemplatePrompt, context_init, placeholder_prefix, prompt_inputs,
                                  prompt_template)
from clapkit.validators import size


@attrs.frozen
class CoOpConfig:
    """``n_ctx``: context vectors (default: the tokens of ``init``, else 16); ``init``: a
    phrase whose token embeddings start the context ("" = random, N(0, ``init_std``^2));
    ``class_specific``: one context per class (CSC); ``position``: where the class name sits;
    ``names``: text used for a class name (``{raw_name = "text"}``)."""

    n_ctx: int | None = attrs.field(default=None, validator=size(75, optional=True))  # CLIP's text context: 77 tokens
    init: str = ""
    class_specific: bool = False
    position: Literal["end", "middle", "front"] = attrs.field(
        default="end", validator=attrs.validators.in_(("end", "middle", "front")))
    init_std: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))
    names: dict[str, str] = attrs.field(factory=dict)


def layout_index(eot: torch.Tensor, n_ctx: int, length: int, position: str,
                 name_lens: torch.Tensor | None = None) -> torch.Tensor:
    """``[C,L]`` source positions for the prompt layout.

    The source of class c is ``cat(embedded_placeholder_prompt [L], ctx [n])``: position p < L
    is that token of ``[SOT] X*n <name>. [EOT] pad``, position L + j is context vector j. The
    name of class c is the ``k_c = name_lens[c]`` tokens after the context (default
    ``eot_c - n - 2``: every token up to a separate full stop); the tokens after them (the
    full stop, unless merged into the name's last token, and EOT) stay where they are.
    """
    c = eot.shape[0]
    p = torch.arange(length).expand(c, length)
    k = (eot - n_ctx - 2 if name_lens is None else name_lens).unsqueeze(1)
    ctx0 = length                                      # source position of context vector 0
    src = p.clone()                                    # SOT, ".", EOT, padding stay put
    if position == "end":
        src = torch.where((p >= 1) & (p <= n_ctx), ctx0 + p - 1, src)
    elif position == "front":
        name = (p >= 1) & (p <= k)
        ctx = (p > k) & (p <= k + n_ctx)
        src = torch.where(name, n_ctx + p, src)
        src = torch.where(ctx, ctx0 + p - k - 1, src)
    else:  # middle
        h = n_ctx // 2
        first = (p >= 1) & (p <= h)
        name = (p > h) & (p <= h + k)
        second = (p > h + k) & (p <= n_ctx + k)
        src = torch.where(first, ctx0 + p - 1, src)
        src = torch.where(name, n_ctx + 1 + p - h - 1, src)
        src = torch.where(second, ctx0 + p - k - 1, src)
    return src


def name_lengths(backbone: Backbone, class_texts: Sequence[str], eot: torch.Tensor,
                 n_ctx: int) -> torch.Tensor:
    """``[C]`` token counts of the class texts tokenised alone (between SOT and EOT). An
    error names a class whose name alone has more tokens than its place in the prompt (the
    layout would move EOT)."""
    with torch.no_grad():
        alone = backbone.tokenize(list(class_texts)).cpu().argmax(dim=-1) - 1
    room = eot - n_ctx - 1
    bad = (alone > room).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ClapkitError(f"class name {class_texts[i]!r} has {int(alone[i])} tokens alone but "
                           f"only {int(room[i])} in the prompt; use position = \"end\"")
    return alone


class CoOpPrompt(TemplatePrompt):
    """Text features ``[C,D]`` of learnable-context prompts (``refresh`` re-reads the class
    names' token embeddings when a stage trains the text tower)."""

    def __init__(self, backbone: Backbone, class_texts: Sequence[str], cfg: CoOpConfig) -> None:
        super().__init__(backbone)
        n_ctx, init_vectors = context_init(backbone, cfg.n_ctx, cfg.init, default=16)
        tpl = prompt_template(backbone, class_texts, placeholder_prefix(n_ctx), n_ctx)
        tokens, embedded, eot = tpl.tokens, tpl.embedded, tpl.eot
        width = embedded.shape[-1]
        shape = (len(class_texts), n_ctx, width) if cfg.class_specific else (n_ctx, width)
        if init_vectors is not None:
            ctx = init_vectors.expand(shape).clone()
        else:
            ctx = torch.randn(shape) * cfg.init_std
        self.n_ctx, self.class_specific, self.position = n_ctx, cfg.class_specific, cfg.position
        self.ctx = nn.Parameter(ctx)
        self.use_template(tpl)
        lens = None if cfg.position == "end" else name_lengths(backbone, class_texts, eot, n_ctx)
        self.register_buffer("index", layout_index(eot, n_ctx, tokens.shape[1], cfg.position,
                                                   lens), persistent=False)

    def prompt_embeddings(self) -> torch.Tensor:
        """``[C,L,W]`` token embeddings with the context in place."""
        c, _, w = self.embedded.shape
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(c, -1, -1)
        source = torch.cat([self.embedded.to(ctx.dtype), ctx], dim=1)
        return source.gather(1, self.index.unsqueeze(-1).expand(-1, -1, w))

    def forward(self, image: ImageInputs | None = None,
                step: StepContext | None = None) -> PromptOutput:
        text = self.backbone.encode_text_embedded(self.prompt_embeddings(), self.tokens)
        return PromptOutput(text=text)


def build(cfg: CoOpConfig, ctx: BuildContext) -> CoOpPrompt:
    """Learnable context vectors (CoOp): shared or class-specific, end/middle/front."""
    return CoOpPrompt(*prompt_inputs(ctx, cfg.names, "coop"), cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("prompt", "coop", build, config=CoOpConfig,
                  test_options=lambda ctx: {"n_ctx": 4})
