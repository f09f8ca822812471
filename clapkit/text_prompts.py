"""Building blocks of learnable text prompts, shared by prompt styles that work inside the
text tower (CoOp, CoCoOp, MaPLe, AttriCLIP): the build inputs (backbone and class texts),
context initialisation, tokenised prompt templates with a placeholder context, a base class
that holds the backbone and the template, and the image inputs a conditional prompt reads.

They live in the core so that plugins share one definition instead of importing each other
(DESIGN.md section 1: a plugin imports only the core's public API).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from .errors import ClapkitError
from .interfaces import Backbone, BuildContext, ImageInputs, Prompt

PLACEHOLDER = "X"


def class_texts(class_names: Sequence[str], names: dict[str, str]) -> list[str]:
    """The text of every class name (``names`` overrides; default ``_`` as spaces)."""
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise ClapkitError(f"names: '{unknown[0]}' is not a class of this dataset "
                           f"(classes: {', '.join(class_names)})")
    return [names.get(c, c.replace("_", " ")) for c in class_names]


def prompt_inputs(ctx: BuildContext, names: dict[str, str],
                  who: str) -> tuple[Backbone, list[str]]:
    """``(backbone, class texts)`` a text prompt is built from; a clear error naming the
    prompt style when the backbone is not built yet or the dataset gave no class names."""
    if ctx.backbone is None:
        raise ClapkitError(f"the {who} prompt needs the backbone to be built first")
    if not ctx.class_names:
        raise ClapkitError(f"the {who} prompt needs the class names of the dataset")
    return ctx.backbone, class_texts(ctx.class_names, names)


def phrase_tokens(backbone: Backbone, phrase: str) -> tuple[int, torch.Tensor]:
    """``(n, vectors [n,W])``: the token embeddings of ``phrase`` (between SOT and EOT)."""
    with torch.no_grad():
        tok = backbone.tokenize([phrase.strip()])
        n = int(tok[0].argmax()) - 1
        vec = backbone.token_embedding(tok)[0, 1:1 + n].float().cpu()
    return n, vec


def context_init(backbone: Backbone, n_ctx: int | None, init: str,
                 default: int) -> tuple[int, torch.Tensor | None]:
    """``(n_ctx, vectors [n,W] or None)`` of a learnable context (the ``n_ctx`` and ``init``
    options of CoOp-style prompts): the tokens of the phrase ``init`` (``n_ctx``, when given,
    must be their count), else ``n_ctx`` (``default`` when unset) random vectors."""
    if not init.strip():
        return n_ctx or default, None
    n_init, vectors = phrase_tokens(backbone, init)
    if n_ctx is not None and n_ctx != n_init:
        raise ClapkitError(f"n_ctx = {n_ctx} but init {init!r} has {n_init} "
                           f"tokens; set n_ctx = {n_init} or init = \"\"")
    return n_init, vectors


@attrs.frozen
class PromptTemplate:
    """Tokenised prompts ``[SOT] <prefix tokens> <class text> . [EOT]`` for every class.

    ``n_prefix`` positions after SOT are where a learnable context goes; ``embedded`` holds
    the frozen token embeddings of the whole prompt (the context positions are overwritten).
    """

    tokens: torch.Tensor      # [C,L] long
    embedded: torch.Tensor    # [C,L,W] float32
    n_prefix: int

    @property
    def eot(self) -> torch.Tensor:
        return self.tokens.argmax(dim=-1)


def prompt_template(backbone: Backbone, texts: Sequence[str], prefix: str,
                    n_prefix: int) -> PromptTemplate:
    """Tokenise ``f"{prefix} {text}."`` per class; ``n_prefix`` = tokens of ``prefix``.

    An error names the class whose prompt the tokenizer truncated (no room left for the
    name after the context)."""
    sentences = [f"{prefix} {t}." if prefix else f"{t}." for t in texts]
    with torch.no_grad():
        tokens = backbone.tokenize(sentences).cpu()
        embedded = backbone.token_embedding(tokens).float().cpu()
    eot = tokens.argmax(dim=-1)
    short = (eot - n_prefix - 2) < 1
    if short.any():
        bad = texts[int(short.nonzero()[0])]
        raise ClapkitError(f"class name {bad!r} does not fit in the text context after "
                           f"{n_prefix} context tokens (the tokenizer truncated the prompt)")
    return PromptTemplate(tokens=tokens, embedded=embedded, n_prefix=n_prefix)


class TemplatePrompt(Prompt):
    """Base of the prompt styles built on a :class:`PromptTemplate`.

    The backbone is held by reference, not as a submodule: its frozen weights are neither
    registered twice nor unfrozen by a ``prompts.*`` stage glob (gradients still flow through
    the text tower to the prompt's parameters). The template's ``tokens`` and frozen token
    embeddings ``embedded`` are non-persistent buffers that :meth:`refresh` re-reads."""

    tokens: torch.Tensor
    embedded: torch.Tensor

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self._backbone = (backbone,)

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    def use_template(self, tpl: PromptTemplate) -> None:
        """Register the template's tokens ``[C,L]`` and embeddings ``[C,L,W]`` as buffers."""
        self.register_buffer("tokens", tpl.tokens, persistent=False)
        self.register_buffer("embedded", tpl.embedded, persistent=False)

    def refresh(self) -> None:
        """Re-read the frozen token embeddings (the text tower may have been trained)."""
        with torch.no_grad():
            emb = self.backbone.token_embedding(self.tokens).float()
        self.embedded.copy_(emb.to(self.embedded.device))


def placeholder_prefix(n: int) -> str:
    """``n`` placeholder words (one token each) that a learnable context replaces."""
    return " ".join([PLACEHOLDER] * n)


def as_image_inputs(image: ImageInputs | torch.Tensor | None, who: str) -> ImageInputs:
    """The conditioning inputs of an image-conditioned prompt (a bare tensor is taken as
    ``z``); ``None`` is an error naming the prompt style."""
    if image is None:
        raise ClapkitError(f"the {who} prompt is conditioned on the image features "
                           "(needs_image_features) but was called without them")
    if isinstance(image, ImageInputs):
        return image
    return ImageInputs(z=image)


def image_condition(image: ImageInputs, source: str) -> torch.Tensor:
    """``[B,D]``: the raw CLIP image feature (``raw``, frame and stream mean) or the adapted
    fused feature (``z``)."""
    return image.raw_mean if source == "raw" else image.z


def template_features(ctx: BuildContext, templates: Sequence[str], who: str) -> torch.Tensor:
    """``[C,T,D]``: the L2-normalised text features of every class name in every template
    (``"{}"`` is the class name, underscores read as spaces); no gradient. The template
    statistics of CLAP4CLIP's priors and adapter initialisation are computed from these."""
    bb = ctx.backbone
    if bb is None:
        raise ClapkitError(f"{who} needs the backbone (template text features)")
    sentences = [t.format(c.replace("_", " ")) for c in ctx.class_names for t in templates]
    with torch.no_grad():
        feats = torch.nn.functional.normalize(bb.encode_text(bb.tokenize(sentences)).float(),
                                              dim=-1)
    return feats.reshape(len(ctx.class_names), len(templates), -1)


#: template lists shipped beside this module, by ``template_set`` name
TEMPLATE_SETS = {"imagenet80": "templates_imagenet80.txt", "cifar18": "templates_cifar18.txt"}


def check_templates(templates: Sequence[str]) -> None:
    """At least one template, each with ``{}`` (the class name) exactly once."""
    if not templates:
        raise ValueError("templates must hold at least one template")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain '{{}}' (the class name) exactly once")


def read_template_file(path: Path) -> list[str]:
    """Templates from a text file: one per line; blank lines and ``#`` comments skipped."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    out = [ln for ln in lines if ln and not ln.startswith("#")]
    check_templates(out)
    return out


def check_template_set(value: str) -> None:
    """``value`` is empty, a shipped set name or an existing file (else a ValueError that
    lists the shipped sets)."""
    if value and value not in TEMPLATE_SETS and not Path(value).expanduser().is_file():
        raise ValueError(f"template_set {value!r} is neither a shipped list "
                         f"({', '.join(TEMPLATE_SETS)}) nor an existing file")


def resolve_templates(templates: Sequence[str], template_set: str) -> list[str]:
    """The templates in use: the ``template_set`` list (shipped name or file) when given,
    else ``templates``."""
    if not template_set:
        return list(templates)
    name = TEMPLATE_SETS.get(template_set)
    path = Path(__file__).with_name(name) if name else Path(template_set).expanduser()
    return read_template_file(path)


def template_set_ok(inst: object, attribute: attrs.Attribute, value: str) -> None:
    """:func:`check_template_set` as an attrs validator (``template_set`` fields)."""
    check_template_set(value)


class TemplateChoice:
    """Mixin of attrs configs with a ``templates`` list and a ``template_set`` name (the
    handcrafted prompt, the variational text init, LASP): the user gives one of the two, the
    other stays at its default; :meth:`template_list` is the one in use."""

    templates: list[str]
    template_set: str

    def __attrs_post_init__(self) -> None:
        default = attrs.fields(type(self)).templates.default
        if isinstance(default, attrs.Factory):    # type: ignore[arg-type]
            default = default.factory()
        if self.template_set and list(self.templates) != list(default):
            raise ValueError("give templates or template_set, not both")

    def template_list(self) -> list[str]:
        """The ``template_set`` list (shipped name or file) when given, else ``templates``."""
        return resolve_templates(self.templates, self.template_set)
