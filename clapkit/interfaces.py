"""The contract of each component kind (DESIGN.md section 2).

Components are ``torch.nn.Module`` subclasses of the base classes below (selectors, datasets
and loggers are plain objects). Shapes: B batch, T frames, C classes, D embed dim, S Monte-Carlo
samples. The contract suites in :mod:`clapkit.testing` check these rules for every registered
component.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import attrs
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .plugins import PluginHost

AdapterPlace = Literal["image", "video", "fusion", "text"]
ADAPTER_PLACES: tuple[str, ...] = ("image", "video", "fusion", "text")


@attrs.define
class BuildContext:
    """What a factory may need besides its own recipe options.

    Filled in the order the pipeline is assembled: the backbone first, then the class names
    from the dataset, so a prompt factory can tokenise class names with the backbone.
    """

    host: PluginHost | None = None
    recipe_file: str | None = None
    section: str = ""                      # dotted recipe key of the component being built
    backbone: Backbone | None = None
    class_names: list[str] = attrs.field(factory=list)
    class_counts: list[int] | None = None  # training-set counts, for balancing losses
    task_of_class: list[int] | None = None # class -> task (one task when not incremental)
    streams: tuple[str, ...] = ("image",)
    stream: str | None = None              # the stream an image/video adapter serves
    num_frames: int = 1
    work_dir: Path = Path(".")
    device: torch.device = torch.device("cpu")
    seed: int = 0
    extras: dict[str, Any] = attrs.field(factory=dict)

    @property
    def embed_dim(self) -> int:
        if self.backbone is None:
            raise RuntimeError("embed_dim needs the backbone to be built first")
        return self.backbone.embed_dim

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Backbone(nn.Module):
    """A CLIP model. ``encode_*`` return un-normalised features.

    ``fingerprint()`` is a stable id of the weights and preprocessing; the feature cache keys
    on it, so two different checkpoints must never share one.
    """

    embed_dim: int
    image_size: int

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] -> [B,D]
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:   # [C,L] -> [C,D]
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:      # -> [C,L] long
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp of CLIP's learned log temperature (a scalar tensor)."""
        raise NotImplementedError

    def transform(self, train: bool) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised ``[3,H,W]`` tensor (open_clip's preprocessing)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    # Hooks for prompt styles that work inside the towers (CoOp, MaPLe):
    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:  # [C,L] -> [C,L,W]
        raise NotImplementedError

    def encode_text_embedded(self, embeddings: torch.Tensor, tokens: torch.Tensor,
                             deep_prompts: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Text tower from token embeddings ``[C,L,W]`` (pooled at the EOT of ``tokens``);
        ``deep_prompts[j]`` ``[n,W]`` replaces the n tokens after SOT in layer j+1."""
        raise NotImplementedError

    def encode_image_prompted(self, images: torch.Tensor,
                              deep_prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Vision tower with ``deep_prompts[j]`` ``[n,Wv]`` as extra tokens in layer j."""
        raise NotImplementedError


class Prompt(nn.Module):
    """Turns class names into text features ``[C,D]`` (or per-image ``[B,C,D]``).

    ``changes_image_encoder`` is True for styles that inject prompts into the vision tower
    (MaPLe): image features then cannot come from the cache.
    """

    changes_image_encoder: ClassVar[bool] = False
    needs_image_features: ClassVar[bool] = False  # AttriCLIP picks prompts per image

    def forward(self, image_features: torch.Tensor | None = None) -> PromptOutput:
        raise NotImplementedError

    def vision_prompts(self) -> Any:
        """Deep prompts for the vision tower when ``changes_image_encoder``; else None."""
        return None


@attrs.define
class PromptOutput:
    text: torch.Tensor                                   # [C,D] or [B,C,D]
    aux: dict[str, torch.Tensor] = attrs.field(factory=dict)  # extra outputs for losses


class Adapter(nn.Module):
    """A trainable module on features, declared for one ``place``.

    image:  ``[B,T,D] -> [B,T,D]`` per frame;       video: ``[B,T,D] -> [B,D]``;
    fusion: ``{stream: [B,D]} -> [B,D]``;           text: see :class:`TextAdapterOutput`.
    """

    place: ClassVar[str] = "image"


@attrs.define
class TextAdapterOutput:
    """A text adapter's result: adapted text ``[B,C,D]`` or samples ``[S,B,C,D]``."""

    text: torch.Tensor
    distribution: torch.distributions.Distribution | None = None
    aux: dict[str, torch.Tensor] = attrs.field(factory=dict)


class Router(nn.Module):
    """How many of ``num_samples`` Monte-Carlo samples each task gets.

    ``forward(z [B,D], num_samples, task_of_class [C], tasks_present) -> LongTensor[n_tasks]``;
    works without labels at test time; at train time every task in ``tasks_present`` gets >= 1.
    """

    def forward(self, z: torch.Tensor, num_samples: int, task_of_class: torch.Tensor,
                tasks_present: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


@attrs.define
class HeadOutput:
    logits: torch.Tensor                          # [B,C]
    sample_logits: torch.Tensor | None = None     # [S,B,C] when text came as samples

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> HeadOutput:
        """``[B,C]`` as is; ``[S,B,C]`` Monte-Carlo logits averaged over samples."""
        if logits.dim() == 3:
            return cls(logits=logits.mean(0), sample_logits=logits)
        return cls(logits=logits)


class Head(nn.Module):
    """Logits from ``z [B,D]`` and the text view (``[C,D]``, ``[B,C,D]`` or ``[S,B,C,D]``).

    ``views`` holds every prompt view by name for heads that mix several (IEC).
    """

    def forward(self, z: torch.Tensor, text: torch.Tensor,
                views: dict[str, torch.Tensor] | None = None) -> HeadOutput:
        raise NotImplementedError


class Loss(nn.Module):
    """One named term of the total loss; returns a scalar.

    ``needs`` names the step outputs it reads (``logits``, ``z``, ``views.<name>``, ...); the
    pipeline checks at build time that something produces them.
    """

    needs: tuple[str, ...] = ("logits",)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, pipeline: nn.Module) -> None:
        """Called once the pipeline exists (for losses that keep a momentum copy of it)."""


class Selector:
    """Chooses replay exemplars: ``select(features, labels, budget, scores) -> indices``.

    Class-balanced: each class present gets ``budget // n_classes`` (the remainder to the
    first classes), never more than it has.
    """

    def select(self, features: torch.Tensor, labels: torch.Tensor, budget: int,
               scores: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError


def class_quota(labels: torch.Tensor, budget: int) -> dict[int, int]:
    """Per-class exemplar quota for a class-balanced memory of ``budget`` items."""
    classes, counts = torch.unique(labels, return_counts=True)
    if len(classes) == 0 or budget <= 0:
        return {}
    base, extra = divmod(budget, len(classes))
    return {int(c): min(int(n), base + (1 if i < extra else 0))
            for i, (c, n) in enumerate(zip(classes.tolist(), counts.tolist()))}
