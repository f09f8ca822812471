"""One ``nn.Module`` composed from the recipe's components (DESIGN.md section 3).

    streams [B,T,3,H,W] --backbone (or cache)--> f_s [B,T,D] --image adapters--> f_s
      --video adapter--> z_s [B,D] --fusion--> z [B,D]
    prompts -> views {name: [C,D] | [B,C,D]} --text adapters(t, z)--> t [.., C, D]
    head(z, t, views) -> logits [B,C] (+ per-sample logits); no [head]: no logits, the
    losses read the features (image-text objectives)

Parameter names follow the recipe's component keys, so stages select them with globs:
``backbone.*``, ``prompts.<name>.*``, ``adapters.<name>[.<stream>].*``, ``router.*``,
``head.*``, ``losses.<name>.*``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch
from einops import rearrange
from torch import nn

from .build import build_component
from .errors import ClapkitError
from .interfaces import (Adapter, Backbone, BuildContext, Component, Head, HeadOutput,
                         ImageInputs, Loss, Prompt, Router, StepContext, TaskView)
from .shapes import check_shape
from .snapshot import frozen_copy
from .recipe import ComponentSpec, Recipe
from .sections import LossKeys


class Pipeline(nn.Module):
    """The model of a run. ``forward(batch)`` returns the outputs dict losses read.

    ``batch["step"]`` is the :class:`StepContext` the engine built for the batch (a default
    one -- every class seen, not training -- when absent, e.g. in unit tests).
    """

    def __init__(self, *, backbone: Backbone, prompts: dict[str, Prompt],
                 adapters: dict[str, nn.Module], adapter_places: dict[str, str],
                 head: Head | None, head_view: str, losses: dict[str, Loss],
                 loss_keys: dict[str, LossKeys], streams: tuple[str, ...],
                 task_of_class: list[int], router: Router | None = None,
                 num_samples: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompts = nn.ModuleDict(prompts)
        self.adapters = nn.ModuleDict(adapters)
        self.adapter_places = dict(adapter_places)
        self.router = router
        self.head = head
        self.losses = nn.ModuleDict(losses)
        self.loss_keys = dict(loss_keys)
        self.head_view = head_view
        self.streams = tuple(streams)
        self.num_samples = num_samples
        #: section -> plugin name, for messages (set by build_pipeline)
        self.plugin_of: dict[str, str] = {}
        self.register_buffer("task_of_class", torch.as_tensor(task_of_class, dtype=torch.long),
                             persistent=False)
        encoders = [n for n, p in self.prompts.items() if p.changes_image_encoder]
        if len(encoders) > 1:
            raise ClapkitError(f"prompts: '{encoders[0]}' and '{encoders[1]}' both change the "
                               "image encoder (deep vision prompts); a pipeline can use one")
        self.image_prompt: str | None = encoders[0] if encoders else None
        #: set by the engine while a stage trains the text tower: prompts refresh each step
        self.refresh_each_step = False
        #: set by the engine from ``[[stages]] losses``: the terms the stage computes (None:
        #: every term)
        self.active_losses: frozenset[str] | None = None
        #: frozen copy of the text adapters before the first ``reads_previous_input`` one, as
        #: they were at the end of the previous task (buffers: saved, never trained)
        self.text_snapshot: nn.ModuleDict | None = None
        self._snapshot_task = 0

    # -- structure ---------------------------------------------------------------------------

    def _adapters_at(self, place: str) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.adapters.items() if self.adapter_places[n] == place]

    def components(self) -> list[tuple[str, Component]]:
        """Every lifecycle component with its dotted module name, in a fixed order: prompts,
        adapters (per-stream ones each), router, head, losses. Only the outermost: a
        component that holds others drives their lifecycle itself."""
        out: list[tuple[str, Component]] = []

        def walk(name: str, mod: nn.Module | None) -> None:
            if mod is None:
                return
            if isinstance(mod, Component):
                out.append((name, mod))
                return
            for child_name, child in mod.named_children():
                walk(f"{name}.{child_name}", child)

        for prefix, mod in (("prompts", self.prompts), ("adapters", self.adapters),
                            ("router", self.router), ("head", self.head),
                            ("losses", self.losses)):
            walk(prefix, mod)
        return out

    @property
    def changes_image_encoder(self) -> bool:
        return self.image_prompt is not None

    def backbone_trainable(self) -> bool:
        """True when some backbone weight trains (then it runs in train mode)."""
        return any(p.requires_grad for p in self.backbone.parameters())

    def features_cacheable(self) -> bool:
        """True when image features can come from the cache in the current state: no
        backbone weight trains and no prompt changes the image encoder."""
        return not (self.changes_image_encoder or self.backbone_trainable())

    def image_encoder_trainable(self) -> bool:
        """Gradients pass through the image encoder (the opposite of features_cacheable)."""
        return not self.features_cacheable()

    def text_adapter_names(self) -> list[str]:
        return [n for n, _ in self._adapters_at("text")]

    def has_samples(self) -> bool:
        return bool(self._adapters_at("text")) or self.num_samples > 1

    def aux_sources(self) -> dict[str, Component]:
        """The components whose ``aux`` outputs are published, by section name (prompt and
        text-adapter names)."""
        out: dict[str, Component] = dict(self.prompts.items())
        out.update({n: m for n, m in self._adapters_at("text")})
        return out

    def available_outputs(self) -> set[str]:
        """Every name a loss may list in ``needs``, built from the components' declarations:
        the base outputs, ``views.<prompt>``, ``aux.<prompt|text adapter>.<key>`` (from
        ``aux_keys``), ``distributions.<text adapter>``, and ``sample_logits`` /
        ``sample_mask`` when the model samples."""
        out = set(BASE_OUTPUTS) - ({"logits"} if self.head is None else set())
        out |= {f"views.{n}" for n in self.prompts}
        for name, comp in self.aux_sources().items():
            out |= {f"aux.{name}.{k}" for k in getattr(comp, "aux_keys", ())}
        out |= {f"distributions.{n}" for n in self.text_adapter_names()}
        if self.has_samples() and self.head is not None:
            out |= {"sample_logits", "sample_mask"}
        if "image_tokens" in getattr(self.backbone, "capabilities", ()):
            out.add("image_tokens")
        return out

    def stage_losses(self) -> list[tuple[str, Loss]]:
        """The loss terms the current stage computes (``active_losses``; all outside a
        stage)."""
        return [(n, loss) for n, loss in self.losses.items()
                if self.active_losses is None or n in self.active_losses]

    def wants_image_tokens(self) -> bool:
        """A loss reads ``image_tokens``: the vision tower's token output is then kept from
        the pass that gives the features (one pass per step, not one per consumer)."""
        return any("image_tokens" in getattr(loss, "needs", ())
                   for _, loss in self.stage_losses())

    # -- forward -----------------------------------------------------------------------------

    def encode_frames(self, streams: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-frame image features ``{s: [B,T,D]}`` from pixels ``{s: [B,T,3,H,W]}``."""
        return self.encode_frames_and_tokens(streams, False)[0]

    def encode_frames_and_tokens(self, streams: dict[str, torch.Tensor], tokens: bool
                                 ) -> tuple[dict[str, torch.Tensor],
                                            dict[str, torch.Tensor] | None]:
        """The features and, with ``tokens`` (and no deep vision prompt), the vision tower's
        token output of the same pass ``{s: [B, T*N, W]}`` (``encode_image_tokens``: its
        pooled output is ``encode_image``'s)."""
        deep = (self.prompts[self.image_prompt].vision_prompts()
                if self.image_prompt is not None else None)
        keep = tokens and deep is None
        grad = torch.is_grad_enabled() and self.image_encoder_trainable()
        out: dict[str, torch.Tensor] = {}
        toks: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(grad):
            for s in self.streams:
                x = streams[s]
                b = x.shape[0]
                flat = rearrange(x, "b t c h w -> (b t) c h w")
                if keep:
                    states = self.backbone.encode_image_tokens(flat)
                    f = states.pooled
                    toks[s] = rearrange(states.tokens, "(b t) n w -> b (t n) w", b=b)
                elif deep is not None:
                    f = self.backbone.encode_image_prompted(flat, deep)
                else:
                    f = self.backbone.encode_image(flat)
                out[s] = rearrange(f.float(), "(b t) d -> b t d", b=b)
        return out, (toks if keep else None)

    def visual(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor,
                                                                 dict[str, torch.Tensor]]:
        """Image adapters, video adapters and fusion: ``{s: [B,T,D]} -> z [B,D]``."""
        return visual_forward(self.adapters, self.adapter_places, self.streams, features,
                              self.plugin_of)

    def visual_encoder_modules(self) -> nn.Module:
        """A module ``features {s: [B,T,D]} -> z`` over the visual adapters only (shared
        weights, not a child of the pipeline): what MoCo-style losses deep-copy as their
        momentum encoder."""
        return VisualPart(self.adapters, self.adapter_places, self.streams)

    def default_step(self, batch: dict[str, Any]) -> StepContext:
        """The step of a batch that brought none: every class seen, the run's sample count."""
        return StepContext(num_samples=self.num_samples, training=self.training,
                           task=int(self.task_of_class.max()) if self.task_of_class.numel()
                           else 0, task_of_class=self.task_of_class,
                           label=batch.get("label") if self.training else None)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        step: StepContext = batch.get("step") or self.default_step(batch)
        features = batch.get("features")
        image_tokens = None
        if features is None:
            features, image_tokens = self.encode_frames_and_tokens(
                batch["streams"], self.wants_image_tokens())
        raw = {s: f.mean(1) for s, f in features.items()}
        z, stream_z = self.visual(features)
        b = z.shape[0]
        n_cls = int(self.task_of_class.numel())
        d = ("D", int(z.shape[-1]))
        # all classes, or (a component that builds only the seen ones) the seen classes
        cs = [("C", n) for n in sorted({n_cls, step.seen(n_cls)}, reverse=True)]
        views: dict[str, torch.Tensor] = {}
        aux: dict[str, torch.Tensor] = {}
        image = ImageInputs(z=z, raw=raw)
        for name, prompt in self.prompts.items():
            po = prompt(image if prompt.needs_image_features else None, step)
            views[name] = self._check(po.text, [*([c, d] for c in cs),
                                                *([("B", b), c, d] for c in cs)],
                                      f"prompts.{name}", "text features")
            aux.update(_published(name, prompt, po.aux))
        text = views[self.head_view]
        distributions = {}
        sample_mask = None
        text_adapters = self._adapters_at("text")
        if text_adapters:
            if self.router is not None:
                step = attrs.evolve(step, allocation=self.router(z, step))
            for name, ta in text_adapters:
                if getattr(ta, "reads_previous_input", False):
                    step = attrs.evolve(step, previous_input=self._previous_input(
                        views[self.head_view], z, step))
                res = ta(text, z, step)
                text = self._check(res.text, [*([c, d] for c in cs),
                                              *([("B", None), c, d] for c in cs),
                                              *([("S", None), ("B", None), c, d] for c in cs)],
                                   f"adapters.{name}", "adapted text")
                if res.sample_mask is not None:
                    sample_mask = res.sample_mask
                if res.distribution is not None:
                    distributions[name] = res.distribution
                aux.update(_published(name, ta, res.aux))
                queries = getattr(res, "queries", None)
                if queries is not None:
                    step = attrs.evolve(step, queries=queries)
        if self.head is None:            # no classifier: the losses read features/text
            head_out = HeadOutput(logits=None)    # type: ignore[arg-type]
        else:
            head_out = self.head(z, text, views)
            self._check(head_out.logits, [[("B", b), c] for c in cs], "head", "logits")
        if head_out.sample_logits is not None:
            self._check(head_out.sample_logits, [[("S", None), ("B", b), c] for c in cs],
                        "head", "sample_logits")
        if (sample_mask is not None and head_out.sample_mask is None
                and head_out.sample_logits is not None):
            # ragged samples: average only the real ones (the head saw padded text)
            head_out = HeadOutput.from_logits(head_out.sample_logits, sample_mask)
        return {"logits": head_out.logits, "sample_logits": head_out.sample_logits,
                "sample_mask": head_out.sample_mask, "image_tokens": image_tokens,
                "z": z, "stream_z": stream_z,
                "features": features, "raw": raw, "views": views, "text": text, "aux": aux,
                "distributions": distributions, "step": step}

    def _check(self, value: Any, want: Any, section: str, what: str) -> Any:
        return check_shape(value, want, section=section,
                           plugin=self.plugin_of.get(section, section), what=what)

    def refresh_prompts(self) -> None:
        """Recompute what prompt styles derived from the text tower (after it trained)."""
        for p in self.prompts.values():
            p.refresh()

    def on_task_start(self, task: int, seen_classes: int) -> None:
        """Every component's ``on_task_start`` (growth happens here), after the snapshot of
        the text adapters a ``reads_previous_input`` adapter needs (the previous task's)."""
        self._snapshot_text_chain(task)
        for _, comp in self.components():
            comp.on_task_start(task, seen_classes)

    def _snapshot_text_chain(self, task: int) -> None:
        chain = self._adapters_at("text")
        first = next((i for i, (_, m) in enumerate(chain)
                      if getattr(m, "reads_previous_input", False)), None)
        if first is None or task == 0 or task <= self._snapshot_task:
            return
        self.text_snapshot = nn.ModuleDict({n: frozen_copy(m) for n, m in chain[:first]})
        self._snapshot_task = task

    def _previous_input(self, text: torch.Tensor, z: torch.Tensor, step: StepContext
                        ) -> torch.Tensor | None:
        """The snapshot chain on ``text`` for the classes of the tasks before ``step.task``
        (as the previous task saw them: its seen classes, its task tokens); None at eval
        time, in the first task, or before any snapshot."""
        toc = step.task_of_class
        if not step.training or step.task == 0 or toc is None or self._snapshot_task == 0:
            return None
        n_old = int((toc < step.task).sum())
        if n_old == 0:
            return None
        prev = attrs.evolve(step, task=step.task - 1, seen_classes=n_old, allocation=None,
                            queries=None, previous_input=None)
        x = text
        with torch.no_grad():
            for name, ta in (self.text_snapshot or {}).items():
                res = ta(x, z, prev)
                x = res.text
                if res.queries is not None:
                    prev = attrs.evolve(prev, queries=res.queries)
        return x[..., :n_old, :]

    def reads_task_view(self) -> bool:
        """Whether some component implements ``on_task_end``: only then does the task end
        encode the task's training items for it (a pre-training run of 8,000 images saves
        a full pass)."""
        return any(type(comp).on_task_end is not Component.on_task_end
                   for _, comp in self.components())

    def on_task_end(self, task: int, view: TaskView) -> None:
        for _, comp in self.components():
            comp.on_task_end(task, view)

    def compute_losses(self, outputs: dict[str, Any], batch: dict[str, Any],
                       epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``total = sum_i w_i(epoch) * L_i`` over the stage's terms (``active_losses``);
        every term is returned for logging (0 for a term the stage leaves out)."""
        total = outputs["z"].new_zeros((), dtype=torch.float32)
        terms: dict[str, float] = {n: 0.0 for n in self.losses}     # left out: logged as 0
        for name, loss in self.stage_losses():
            w = self.loss_keys[name].weight_at(epoch)
            if w == 0.0:
                continue
            value = loss(outputs, batch)
            terms[name] = float(value.detach())
            total = total + w * value
        terms["total"] = float(total.detach())
        return total, terms


#: outputs every pipeline returns (``raw``: per-stream frame-mean backbone features)
BASE_OUTPUTS = ("logits", "z", "text", "features", "raw", "stream_z", "views", "step")


def _published(section: str, comp: nn.Module, aux: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """``aux`` keys as ``<section>.<key>``; a key the component did not declare in
    ``aux_keys`` is an error (a loss could never have declared a need for it)."""
    declared = getattr(comp, "aux_keys", ())
    for k in aux:
        if k not in declared:
            raise ClapkitError(f"{section}: {type(comp).__name__} returned aux output '{k}' "
                               f"but declares aux_keys = {tuple(declared)}; declare it")
    return {f"{section}.{k}": v for k, v in aux.items()}


def visual_forward(adapters: nn.ModuleDict, places: dict[str, str], streams: tuple[str, ...],
                   features: dict[str, torch.Tensor], plugins: dict[str, str] | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image adapters, video adapters and fusion; each output is checked at its boundary
    (:func:`clapkit.shapes.check_shape`; ``plugins`` maps sections such as
    ``adapters.temporal`` to plugin names for the message)."""
    plugins = plugins or {}

    def chk(value: torch.Tensor, want: tuple, name: str, what: str) -> torch.Tensor:
        section = f"adapters.{name}"
        return check_shape(value, want, section=section, plugin=plugins.get(section, name),
                           what=what)

    feats = dict(features)
    for name, mod in adapters.items():
        if places[name] == "image":
            for s, m in mod.items():
                b, t, d = feats[s].shape
                feats[s] = chk(m(feats[s]), (("B", b), ("T", t), ("D", d)), name,
                               f"image adapter output (stream '{s}')")
    video = [(name, mod) for name, mod in adapters.items() if places[name] == "video"]
    stream_z: dict[str, torch.Tensor] = {}
    for s in streams:
        owner = next(((name, mod[s]) for name, mod in video if s in mod), None)
        if owner is not None:
            b, _, d = feats[s].shape
            stream_z[s] = chk(owner[1](feats[s]), (("B", b), ("D", d)), owner[0],
                              f"video adapter output (stream '{s}')")
        else:
            stream_z[s] = feats[s].mean(1)
    fusion = [(name, mod) for name, mod in adapters.items() if places[name] == "fusion"]
    if fusion:
        b = next(iter(stream_z.values())).shape[0]
        z = chk(fusion[0][1](stream_z), (("B", b), ("D", None)), fusion[0][0],
                "fusion output z")
    else:
        z = stream_z[streams[0]]
    return z, stream_z


class VisualPart(nn.Module):
    """The visual adapters of a pipeline as one module (see visual_encoder_modules)."""

    def __init__(self, adapters: nn.ModuleDict, places: dict[str, str],
                 streams: tuple[str, ...]) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict({n: m for n, m in adapters.items()
                                       if places[n] in ("image", "video", "fusion")})
        self.places, self.streams = dict(places), tuple(streams)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return visual_forward(self.adapters, self.places, self.streams, features)[0]


# --- assembly -------------------------------------------------------------------------------

def build_pipeline(recipe: Recipe, ctx: BuildContext, backbone: Backbone) -> Pipeline:
    """Build every component of ``recipe`` in assembly order and compose them.

    ``ctx`` must already hold the class names, streams and class->task map (from the data);
    ``backbone`` may be passed in when the caller built it already (cache, data transforms).
    """
    ctx.backbone = backbone
    prompts = {n: build_component(s, ctx) for n, s in recipe.prompts.items()}
    encoders = [n for n, p in prompts.items() if p.changes_image_encoder]
    if len(encoders) > 1:
        raise ClapkitError(f"{recipe.file}: prompts: '{encoders[0]}' and '{encoders[1]}' both "
                           "change the image encoder (deep vision prompts); a pipeline can "
                           "use only one")
    adapters: dict[str, nn.Module] = {}
    places: dict[str, str] = {}
    for name, spec in adapter_order(recipe.adapters):
        mod, place = _build_adapter(spec, ctx)
        adapters[name], places[name] = mod, place
    fusions = [n for n, p in places.items() if p == "fusion"]
    if len(fusions) > 1:
        raise ClapkitError(f"{recipe.file}: adapters: more than one fusion adapter "
                           f"({', '.join(fusions)}); a pipeline has one")
    if len(ctx.streams) > 1 and not fusions:
        raise ClapkitError(f"{recipe.file}: adapters: the data yields streams "
                           f"{', '.join(ctx.streams)} but no fusion adapter combines them "
                           "(add e.g. [adapters.fusion] plugin = \"concat_linear\")")
    router = build_component(recipe.router, ctx) if recipe.router else None
    head_view = (recipe.head.keys.view if recipe.head else None) or next(iter(recipe.prompts))
    if head_view not in prompts:
        raise ClapkitError(f"{recipe.head.file if recipe.head else recipe.file}: head.view: "
                           f"no prompt named '{head_view}' (prompts: {', '.join(prompts)})")
    head = build_component(recipe.head, ctx) if recipe.head else None
    losses = {n: build_component(s, ctx) for n, s in recipe.losses.items()}
    pipe = Pipeline(backbone=backbone, prompts=prompts, adapters=adapters,
                    adapter_places=places, head=head, head_view=head_view, losses=losses,
                    loss_keys={n: s.keys for n, s in recipe.losses.items()},
                    streams=ctx.streams, router=router,
                    task_of_class=ctx.task_of_class or [0] * ctx.num_classes,
                    num_samples=recipe.run.num_samples)
    pipe.plugin_of = {s.section: s.plugin for s in recipe.components()}
    _check_loss_needs(recipe.losses, losses, pipe.available_outputs())
    for loss in losses.values():
        loss.bind(pipe)
    return pipe


def adapter_order(specs: dict[str, ComponentSpec]) -> list[tuple[str, ComponentSpec]]:
    """The adapters in the order they run within their place: ascending ``run_order`` key,
    ties in recipe table order."""
    return sorted(specs.items(), key=lambda kv: kv[1].keys.run_order)


def _build_adapter(spec: ComponentSpec, ctx: BuildContext) -> tuple[nn.Module, str]:
    entry = ctx.host.registries["adapter"].get(spec.plugin)  # type: ignore[union-attr]
    place = entry.meta.get("place", "image")
    if place in ("image", "video"):
        streams = spec.keys.streams or list(ctx.streams)
        unknown = [s for s in streams if s not in ctx.streams]
        if unknown:
            raise ClapkitError(f"{spec.file}: {spec.section}.streams: unknown stream "
                               f"'{unknown[0]}' (the data yields: {', '.join(ctx.streams)})")
        mods = nn.ModuleDict({s: build_component(spec, ctx, stream=s) for s in streams})
        _check_place(spec, mods.values(), place)
        return mods, place
    if spec.keys.streams:
        raise ClapkitError(f"{spec.file}: {spec.section}.streams: only image and video "
                           f"adapters serve streams; '{spec.plugin}' is a {place} adapter")
    mod = build_component(spec, ctx)
    _check_place(spec, [mod], place)
    return mod, place


def _check_place(spec: ComponentSpec, mods: Iterable[nn.Module], place: str) -> None:
    for m in mods:
        if isinstance(m, Adapter) and m.place != place:
            raise ClapkitError(f"{spec.section}: adapter '{spec.plugin}' registered for place "
                               f"'{place}' but its module declares '{m.place}'")


def _check_loss_needs(specs: dict[str, ComponentSpec], losses: dict[str, Loss],
                      available: set[str]) -> None:
    for name, loss in losses.items():
        for need in getattr(loss, "needs", ()):
            if need not in available:
                spec = specs[name]
                raise ClapkitError(
                    f"{spec.file}: {spec.section}: loss '{spec.plugin}' needs output '{need}', "
                    f"which nothing in this recipe produces (available: "
                    f"{', '.join(sorted(available))})")
