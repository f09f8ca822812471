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

from .errors import ClapkitError

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
    #: the training split's captions (caption datasets; empty otherwise): what a caption
    #: model may build its output vocabulary from
    train_texts: list[str] = attrs.field(factory=list)
    work_dir: Path = Path(".")
    device: torch.device = torch.device("cpu")
    seed: int = 0

    @property
    def embed_dim(self) -> int:
        if self.backbone is None:
            raise RuntimeError("embed_dim needs the backbone to be built first")
        return self.backbone.embed_dim

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@attrs.frozen
class StepContext:
    """Where a forward pass is (DESIGN.md section 4): built by the engine for every batch and
    passed as ``batch["step"]``; components read it instead of untyped dicts.

    ``seen_classes``: classes ``[0, seen_classes)`` in class order are seen so far (all of
    them in a single-task run); adapters and routers compute only what those need.
    """

    task: int = 0
    seen_classes: int | None = None        # None: every class (plain training, tests)
    epoch: int = 0
    num_samples: int = 1                   # Monte-Carlo samples (``run.num_samples``)
    training: bool = False
    task_of_class: torch.Tensor | None = None   # [C] long, class -> task
    tasks_present: torch.Tensor | None = None   # tasks with a label in the batch (train only)
    allocation: torch.Tensor | None = None      # [n_tasks] long, the router's sample counts
    label: torch.Tensor | None = None           # [B] class-order labels (train only)
    queries: torch.Tensor | None = None         # [Q,D] extra query rows offered by an
    #   earlier text adapter in the chain (TextAdapterOutput.queries; row q = task q)
    #: evaluation only: the Monte-Carlo noise source, seeded afresh at the start of every
    #: evaluation (``run.seed``), so that one set of weights gives one figure in the run,
    #: in ``clapkit eval`` and after a resume; draw eval-time noise with
    #: :func:`clapkit.functional.step_randn`. None at train time (the run's seeded RNG).
    generator: torch.Generator | None = None
    #: training only, from task 1 on, for a text adapter with ``reads_previous_input``: its
    #: input ``[..., C_old, D]`` (the classes of the earlier tasks) as the text adapters
    #: before it computed it at the end of the previous task (their frozen snapshot, run on
    #: this batch) -- what a distillation term compares the present with.
    previous_input: torch.Tensor | None = None

    def seen(self, num_classes: int) -> int:
        return num_classes if self.seen_classes is None else int(self.seen_classes)

    @property
    def num_tasks_seen(self) -> int:
        return self.task + 1


@attrs.frozen
class TaskView:
    """What a component may read at the end of a task: that task's training items (new
    classes plus the replay memory), encoded by the current model in eval mode.

    ``image`` holds the raw per-stream backbone features averaged over frames ``{s: [N,D]}``
    (from the cache when the encoder is frozen); ``z`` the fused features ``[N,D]``.
    """

    task: int
    classes: list[int]                    # class-order ids the task added
    labels: torch.Tensor                  # [N] class-order labels
    z: torch.Tensor                       # [N,D]
    image: dict[str, torch.Tensor] = attrs.field(factory=dict)
    index: torch.Tensor | None = None     # [N] train-split indices


@attrs.frozen
class ImageInputs:
    """What a prompt style may condition on (``Prompt.needs_image_features``): the adapted
    fused feature ``z [B,D]`` and the raw CLIP features per stream ``{s: [B,D]}`` (frame
    mean, before any adapter; AttriCLIP matches its keys against these)."""

    z: torch.Tensor
    raw: dict[str, torch.Tensor] = attrs.field(factory=dict)

    @property
    def raw_mean(self) -> torch.Tensor:
        """The raw features averaged over streams ``[B,D]`` (the single stream's as is)."""
        vals = list(self.raw.values())
        if not vals:
            return self.z
        return vals[0] if len(vals) == 1 else torch.stack(vals).mean(0)


class Component(nn.Module):
    """Base of every module kind: the task lifecycle and the declared outputs.

    The trainer calls ``on_task_start`` before a task's first stage and ``on_task_end`` after
    its memory update and before the task-end evaluation, on every component (prompts, adapters, router, head, losses).
    *Growth happens only in* ``on_task_start`` (add a per-task parameter, freeze the old
    ones, snapshot the previous task for distillation): a resumed run replays
    ``on_task_start(0..t)`` before loading the checkpoint, so grown state loads strictly.
    ``on_task_end`` may only change the values of existing parameters and buffers (e.g.
    fill the anchor of the finished task). State must be parameters or buffers so it
    checkpoints.

    ``aux_keys`` names the extra tensors the component returns in its ``aux`` dict; the
    pipeline publishes them as ``aux.<section name>.<key>`` step outputs and loss ``needs``
    are checked against that declaration.
    """

    aux_keys: ClassVar[tuple[str, ...]] = ()

    def on_task_start(self, task: int, seen_classes: int) -> None:
        """Task ``task`` (0-based) begins; classes ``[0, seen_classes)`` are now known."""

    def on_task_end(self, task: int, view: TaskView) -> None:
        """Task ``task`` ended (after its stages and the memory update; the task-end
        evaluation and ``last.pt`` see what this learns)."""


#: Capabilities a backbone may declare (``Backbone.capabilities``) beyond pooled features,
#: each with the methods it promises. A component that needs one asks for it at build
#: (:meth:`Backbone.require`), so a backbone without it is refused before the first step.
BACKBONE_CAPABILITIES: dict[str, str] = {
    "image_tokens": "encode_image_tokens: pooled image features with the vision tower's "
                    "token states",
    "text_tokens": "encode_text_tokens: pooled text features with the text tower's token "
                   "states and padding mask",
    "text_embedded": "token_embedding and encode_text_embedded: the text tower run from token "
                     "embeddings (CoOp, CoCoOp, AttriCLIP)",
    "deep_prompts": "deep_prompts of encode_text_embedded and encode_image_prompted: prompt "
                    "tokens inside both towers (MaPLe, deep VPT)",
    "text_decoder": "decode_text: a caption decoder reading image tokens (CoCa)",
}


@attrs.frozen
class TokenStates:
    """A tower's output at token level (``Backbone.encode_image_tokens`` /
    ``encode_text_tokens``).

    ``pooled`` equals ``encode_image`` / ``encode_text`` of the same input; ``tokens`` are the
    token states the model's own token output gives (image: per patch or per pooling query;
    text: per position); ``mask`` marks real tokens (text: up to and including EOT, so
    padding is False; image: all True).
    """

    pooled: torch.Tensor          # [B,D]
    tokens: torch.Tensor          # [B,N,W]
    mask: torch.Tensor            # [B,N] bool


class Backbone(nn.Module):
    """A CLIP model. ``encode_*`` return un-normalised features.

    ``fingerprint()`` is a stable id of the weights and preprocessing; the feature cache keys
    on it, so two different checkpoints must never share one. Widths and depths come from
    the model (never hard-coded by a prompt style): ``text_width``/``vision_width`` are the
    token widths inside the towers, ``text_layers``/``vision_layers`` their block counts.

    ``capabilities`` (names from :data:`BACKBONE_CAPABILITIES`) say which methods beyond the
    pooled encoders work; the others raise a :class:`ClapkitError` naming the backbone
    (:meth:`require`). ``image_token_width``/``text_token_width`` are the widths of the
    token states (``image_tokens``/``text_tokens``), ``vocab_size`` the decoder's
    (``text_decoder``).

    Deep prompts (``deep_prompts`` of ``encode_text_embedded``/``encode_image_prompted``):
    one convention for both towers -- ``deep_prompts[j]`` is used as the input of block
    ``j`` (0-based). Entry 0 is the prompt present from the start (text: it replaces the
    ``n`` tokens after SOT in the embeddings; vision: appended after the patch tokens);
    entry ``j >= 1`` replaces the prompt tokens output by block ``j-1``. ``None`` entries
    and positions past the list let the previous prompt outputs pass through.
    """

    embed_dim: int
    image_size: int
    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int
    capabilities: frozenset[str] = frozenset()

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

    def describe(self) -> str:
        """One line naming the model (in messages and ``clapkit`` output)."""
        return type(self).__name__

    def require(self, *needed: str, who: str = "this component") -> None:
        """Refuse (one :class:`ClapkitError` naming the backbone, what is missing and what
        it has) when a capability in ``needed`` is not declared; an unknown name is a bug."""
        unknown = sorted(set(needed) - set(BACKBONE_CAPABILITIES))
        if unknown:
            raise ValueError(f"unknown backbone capability {unknown[0]!r} (known: "
                             f"{', '.join(sorted(BACKBONE_CAPABILITIES))})")
        missing = [n for n in needed if n not in self.capabilities]
        if missing:
            has = ", ".join(sorted(self.capabilities)) or "none"
            raise ClapkitError(
                f"{who} needs backbone capability {', '.join(repr(m) for m in missing)} "
                f"({'; '.join(BACKBONE_CAPABILITIES[m].split(':')[0] for m in missing)}), "
                f"which backbone {self.describe()} lacks (it has: {has})")

    # Token-level outputs (capabilities image_tokens / text_tokens / text_decoder):
    def encode_image_tokens(self, images: torch.Tensor) -> TokenStates:
        """``[B,3,H,W]`` -> pooled ``[B,D]`` (= ``encode_image``), tokens
        ``[B,N,image_token_width]``, mask ``[B,N]``."""
        self.require("image_tokens", who="encode_image_tokens")
        raise NotImplementedError

    def encode_text_tokens(self, tokens: torch.Tensor) -> TokenStates:
        """``[C,L]`` -> pooled ``[C,D]`` (= ``encode_text``), tokens
        ``[C,L',text_token_width]``, padding mask ``[C,L']``."""
        self.require("text_tokens", who="encode_text_tokens")
        raise NotImplementedError

    def decode_text(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor
                    ) -> torch.Tensor:
        """Caption decoder: image token states ``[B,N,Wi]`` (``encode_image_tokens``) and
        text token states ``[B,L,Wt]`` (``encode_text_tokens``) -> next-token logits
        ``[B,L,vocab_size]``; position ``i`` sees text positions ``<= i`` only."""
        self.require("text_decoder", who="decode_text")
        raise NotImplementedError

    # Hooks for prompt styles that work inside the towers (CoOp, MaPLe; capabilities
    # text_embedded / deep_prompts):
    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:  # [C,L] -> [C,L,W]
        self.require("text_embedded", who="token_embedding")
        raise NotImplementedError

    def encode_text_embedded(self, embeddings: torch.Tensor, tokens: torch.Tensor,
                             deep_prompts: Sequence[torch.Tensor | None] | None = None
                             ) -> torch.Tensor:
        """Text tower from token embeddings ``[C,L,Wt]`` (pooled at the EOT of ``tokens``);
        ``deep_prompts[j]`` ``[n,Wt]`` (or ``[C,n,Wt]``) is the prompt input of block j
        (see the class docstring; entry 0 is normally already in ``embeddings``)."""
        deep = any(p is not None for p in deep_prompts or [])
        self.require("text_embedded", *(["deep_prompts"] if deep else []),
                     who="encode_text_embedded")
        raise NotImplementedError

    def encode_image_prompted(self, images: torch.Tensor,
                              deep_prompts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Vision tower with ``deep_prompts[j]`` ``[n,Wv]`` as the prompt tokens input to
        block j (appended after the patch tokens, stripped before pooling);
        ``encode_image_prompted(x, []) == encode_image(x)``."""
        self.require("deep_prompts", who="encode_image_prompted")
        raise NotImplementedError


class Prompt(Component):
    """Turns class names into text features ``[C,D]`` (or per-image ``[B,C,D]``).

    ``changes_image_encoder`` is True for styles that inject prompts into the vision tower
    (MaPLe): image features then cannot come from the cache (the frozen weights still run
    in eval mode). ``needs_image_features``: ``forward`` receives :class:`ImageInputs`
    (CoCoOp, AttriCLIP); otherwise it receives ``None``.
    """

    changes_image_encoder: ClassVar[bool] = False
    needs_image_features: ClassVar[bool] = False

    def forward(self, image: ImageInputs | None = None,
                step: StepContext | None = None) -> PromptOutput:
        raise NotImplementedError

    def vision_prompts(self) -> Any:
        """Deep prompts for the vision tower when ``changes_image_encoder``; else None."""
        return None

    def refresh(self) -> None:
        """Recompute anything derived from the backbone's text tower (called when a stage
        trains the text tower; styles that precompute features at build must do it here)."""


@attrs.define
class PromptOutput:
    text: torch.Tensor                                   # [C,D] or [B,C,D]
    aux: dict[str, torch.Tensor] = attrs.field(factory=dict)  # keys declared in aux_keys


class Adapter(Component):
    """A trainable module on features, declared for one ``place``.

    image:  ``[B,T,D] -> [B,T,D]`` per frame;       video: ``[B,T,D] -> [B,D]``;
    fusion: ``{stream: [B,D]} -> [B,D]``;
    text:   ``forward(text [C,D] | [B,C,D], z [B,D], step: StepContext)`` ->
            :class:`TextAdapterOutput`.

    ``reads_previous_input`` (text adapters; a class or instance attribute): the pipeline
    then keeps, at the start of every task after the first, a frozen snapshot of the text
    adapters before this one, and at train time hands this adapter ``step.previous_input``
    (see :class:`StepContext`): distilling from the previous task's model needs the input
    that model would have produced, not the present one.
    """

    place: ClassVar[str] = "image"
    reads_previous_input: bool = False


@attrs.define
class TextAdapterOutput:
    """A text adapter's result: adapted text ``[B,C,D]`` or samples ``[S,B,C,D]``.

    ``sample_mask`` ``[S,C]`` (bool) marks which samples are real for which class when tasks
    got different sample counts (ragged allocation); heads average only over real samples.
    """

    text: torch.Tensor
    distribution: torch.distributions.Distribution | None = None
    aux: dict[str, torch.Tensor] = attrs.field(factory=dict)
    sample_mask: torch.Tensor | None = None
    #: Extra query rows ``[Q,D]`` (row q belongs to task q) offered to the text adapters
    #: after this one: the pipeline hands them on as ``step.queries`` (``task_tokens`` ->
    #: ``vga``). None: this adapter offers none (the previous offer stays).
    queries: torch.Tensor | None = None


class Router(Component):
    """How many of ``step.num_samples`` Monte-Carlo samples each task gets.

    ``forward(z [B,D], step) -> LongTensor[n_tasks]`` (``n_tasks`` = tasks in
    ``step.task_of_class``); works without labels at test time; at train time every task in
    ``step.tasks_present`` gets >= 1, and no allocation is all zeros.
    """

    def forward(self, z: torch.Tensor, step: StepContext) -> torch.Tensor:
        raise NotImplementedError


@attrs.define
class HeadOutput:
    logits: torch.Tensor                          # [B,C]
    sample_logits: torch.Tensor | None = None     # [S,B,C] when text came as samples
    sample_mask: torch.Tensor | None = None       # [S,C] bool: real samples (ragged S)

    @classmethod
    def from_logits(cls, logits: torch.Tensor,
                    sample_mask: torch.Tensor | None = None) -> HeadOutput:
        """``[B,C]`` as is; ``[S,B,C]`` Monte-Carlo logits averaged over (real) samples."""
        if logits.dim() == 3:
            if sample_mask is None:
                return cls(logits=logits.mean(0), sample_logits=logits)
            w = sample_mask.to(logits.dtype)[:, None, :]                  # [S,1,C]
            mean = (logits * w).sum(0) / w.sum(0).clamp_min(1)
            return cls(logits=mean, sample_logits=logits, sample_mask=sample_mask)
        return cls(logits=logits)


class Head(Component):
    """Logits from ``z [B,D]`` and the text view (``[C,D]``, ``[B,C,D]`` or ``[S,B,C,D]``).

    ``views`` holds every prompt view by name for heads that mix several (IEC).
    """

    def forward(self, z: torch.Tensor, text: torch.Tensor,
                views: dict[str, torch.Tensor] | None = None) -> HeadOutput:
        raise NotImplementedError


class Loss(Component):
    """One named term of the total loss; returns a scalar.

    ``needs`` names the step outputs it reads (``logits``, ``z``, ``views.<name>``,
    ``aux.<section>.<key>``, ``distributions.<adapter>``, ...); the pipeline checks at build
    time that something declares them (:meth:`Pipeline.available_outputs`).
    """

    needs: tuple[str, ...] = ("logits",)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, pipeline: nn.Module) -> None:
        """Called once the pipeline exists (for losses that keep a momentum copy of it)."""


@attrs.frozen
class SelectionInputs:
    """What an exemplar selector ranks (one item per candidate, aligned by position).

    Logits are restricted to the classes seen so far (``[N, C_seen]``, no ``-inf``);
    ``sample_logits`` ``[S,N,C_seen]`` keeps each item's own Monte-Carlo samples (padded to
    the largest count), with ``sample_mask`` ``[S,N,C_seen]`` marking the real ones when the
    sample count varied between batches or tasks (None otherwise).
    """

    features: torch.Tensor                        # [N,D] fused image features z
    labels: torch.Tensor                          # [N] class-order labels
    logits: torch.Tensor                          # [N,C_seen]
    sample_logits: torch.Tensor | None = None     # [S,N,C_seen]
    sample_mask: torch.Tensor | None = None       # [S,N,C_seen] bool
    index: torch.Tensor | None = None             # [N] train-split indices


class Selector:
    """Chooses replay exemplars: ``select(inputs, budget) -> LongTensor`` of positions into
    ``inputs`` (not dataset indices).

    Class-balanced: each class present gets ``budget // n_classes`` (the remainder to the
    first classes), never more than it has.
    """

    def select(self, inputs: SelectionInputs, budget: int) -> torch.Tensor:
        raise NotImplementedError


def class_quota(labels: torch.Tensor, budget: int) -> dict[int, int]:
    """Per-class exemplar quota for a class-balanced memory of ``budget`` items."""
    classes, counts = torch.unique(labels, return_counts=True)
    if len(classes) == 0 or budget <= 0:
        return {}
    base, extra = divmod(budget, len(classes))
    return {int(c): min(int(n), base + (1 if i < extra else 0))
            for i, (c, n) in enumerate(zip(classes.tolist(), counts.tolist()))}
