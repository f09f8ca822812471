"""`handcrafted` prompt: fixed text features from templates, template ensembles or per-class
descriptive prompts (CLIP zero-shot, seeds 001/004; the fixed "descriptive" view t_desc of the
enhanced CLIP-CAER, seed 002 section 4).

Every class gets a list of sentences: the templates filled with its name, or its descriptions
from the recipe (a description may contain ``{}`` for the class name). The class feature is
the mean of the L2-normalised sentence embeddings (re-normalised by default, as CLIP's
ensembles are). It is computed once at build time without gradients and kept as a buffer:
this view never trains, and it travels with checkpoints. When a stage trains the text tower,
the engine calls :meth:`HandcraftedPrompt.refresh` every step, which re-encodes the sentences
with the current tower (the features never go stale).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import (Backbone, BuildContext, ImageInputs, Prompt, PromptOutput,
                                StepContext)
from clapkit.text_prompts import (TEMPLATE_SETS, TemplateChoice, check_templates,
                                  read_template_file, template_set_ok)
from clapkit.validators import MAX_BATCH, size

__all__ = ["TEMPLATE_SETS", "read_template_file", "HandcraftedConfig", "HandcraftedPrompt",
           "build", "class_sentences", "encode_sentences"]

Descriptions = dict[str, list[str] | str] | list[list[str] | str] | None


def _check_templates(inst: object, attribute: attrs.Attribute, value: list[str]) -> None:
    check_templates(value)


DEFAULT_TEMPLATES = ["a photo of a {}."]



@attrs.frozen
class HandcraftedConfig(TemplateChoice):
    """``templates``: sentences with ``{}`` for the class name (several = an ensemble);
    ``descriptions``: per-class sentences, ``{ClassName = ["...", ...]}`` or a list aligned
    with the classes (a string or a list of strings per class); when given, every class needs
    some and they replace the templates unless ``with_templates``; ``names``: text used for a
    class name in templates (``{raw_name = "text"}``; default: the name with ``_`` as spaces);
    ``renormalize``: L2-normalise the ensemble mean; ``batch_size``: sentences per encoder call;
    ``template_set``: a shipped template list used instead of ``templates`` -- ``imagenet80``
    (CLIP's 80 ImageNet templates) or ``cifar18`` (its 18 CIFAR templates) -- or the path of a
    file with one template per line.
    """

    templates: list[str] = attrs.field(factory=lambda: list(DEFAULT_TEMPLATES),
                                       validator=_check_templates)
    descriptions: Descriptions = None
    with_templates: bool = False
    names: dict[str, str] = attrs.field(factory=dict)
    renormalize: bool = True
    batch_size: int = attrs.field(default=256, validator=size(MAX_BATCH))
    template_set: str = attrs.field(default="", validator=template_set_ok)


def class_sentences(cfg: HandcraftedConfig, class_names: Sequence[str]) -> list[list[str]]:
    """The sentences of every class; errors name the class or key that is wrong."""
    unknown = sorted(set(cfg.names) - set(class_names))
    if unknown:
        raise ClapkitError(f"names: '{unknown[0]}' is not a class of this dataset "
                           f"(classes: {', '.join(class_names)})")
    text_of = {c: cfg.names.get(c, c.replace("_", " ")) for c in class_names}
    per_class = [[t.format(text_of[c]) for t in cfg.template_list()] for c in class_names]
    if cfg.descriptions is None:
        return per_class
    desc = _aligned_descriptions(cfg.descriptions, class_names)
    out = []
    for c, templated, lines in zip(class_names, per_class, desc):
        filled = [d.replace("{}", text_of[c]) for d in lines]
        out.append(templated + filled if cfg.with_templates else filled)
    return out


def _aligned_descriptions(desc: dict | list, class_names: Sequence[str]) -> list[list[str]]:
    if isinstance(desc, dict):
        unknown = sorted(set(desc) - set(class_names))
        if unknown:
            raise ClapkitError(f"descriptions: '{unknown[0]}' is not a class of this dataset "
                               f"(classes: {', '.join(class_names)})")
        missing = [c for c in class_names if not desc.get(c)]
        if missing:
            raise ClapkitError(f"descriptions: class '{missing[0]}' has no description "
                               f"(every class needs at least one)")
        items = [desc[c] for c in class_names]
    else:
        if len(desc) != len(class_names):
            raise ClapkitError(f"descriptions: a list needs one entry per class: got "
                               f"{len(desc)} for {len(class_names)} classes "
                               f"({', '.join(class_names)})")
        items = list(desc)
        for c, d in zip(class_names, items):
            if not d:
                raise ClapkitError(f"descriptions: class '{c}' has no description "
                                   f"(every class needs at least one)")
    return [[d] if isinstance(d, str) else list(d) for d in items]


@torch.no_grad()
def encode_sentences(backbone: Backbone, sentences: list[list[str]], renormalize: bool = True,
                     batch_size: int = 256) -> torch.Tensor:
    """``[C,D]``: per class, the mean of its L2-normalised sentence embeddings."""
    flat = [s for group in sentences for s in group]
    owner = torch.repeat_interleave(torch.arange(len(sentences)),
                                    torch.tensor([len(g) for g in sentences]))
    tokens = backbone.tokenize(flat)
    device = next(backbone.parameters()).device
    feats = torch.cat([F.normalize(backbone.encode_text(tokens[i:i + batch_size].to(device))
                                   .float(), dim=-1)
                       for i in range(0, len(flat), batch_size)]).cpu()
    sums = torch.zeros(len(sentences), feats.shape[-1]).index_add_(0, owner, feats)
    mean = sums / torch.bincount(owner, minlength=len(sentences)).unsqueeze(1).float()
    return F.normalize(mean, dim=-1) if renormalize else mean


class HandcraftedPrompt(Prompt):
    """Fixed class text features ``[C,D]`` (a buffer, never trained)."""

    def __init__(self, features: torch.Tensor, sentences: list[list[str]],
                 backbone: Backbone | None = None, renormalize: bool = True,
                 batch_size: int = 256) -> None:
        super().__init__()
        self.register_buffer("features", features)
        self.sentences = sentences
        self._backbone = (backbone,)      # a reference, not a submodule
        self.renormalize, self.batch_size = renormalize, batch_size

    def forward(self, image: ImageInputs | None = None,
                step: StepContext | None = None) -> PromptOutput:
        return PromptOutput(text=self.features)

    def refresh(self) -> None:
        """Re-encode the sentences with the backbone's current text tower."""
        backbone = self._backbone[0]
        if backbone is None:
            return
        feats = encode_sentences(backbone, self.sentences, self.renormalize, self.batch_size)
        self.features.copy_(feats.to(self.features))


def build(cfg: HandcraftedConfig, ctx: BuildContext) -> HandcraftedPrompt:
    """Fixed text features from templates, ensembles or per-class descriptions."""
    if ctx.backbone is None:
        raise ClapkitError("the handcrafted prompt needs the backbone to be built first")
    if not ctx.class_names:
        raise ClapkitError("the handcrafted prompt needs the class names of the dataset")
    sentences = class_sentences(cfg, ctx.class_names)
    feats = encode_sentences(ctx.backbone, sentences, cfg.renormalize, cfg.batch_size)
    return HandcraftedPrompt(feats, sentences, ctx.backbone, cfg.renormalize, cfg.batch_size)


@hookimpl
def clapkit_register(registrar):
    registrar.add("prompt", "handcrafted", build, config=HandcraftedConfig)
