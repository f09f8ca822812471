"""One ``nn.Module`` composed from the recipe's components (DESIGN.md section 3).

    streams [B,T,3,H,W] --backbone (or cache)--> f_s [B,T,D] --image adapters--> f_s
      --video adapter--> z_s [B,D] --fusion--> z [B,D]
    prompts -> views {name: [C,D] | [B,C,D]} --text adapters(t, z)--> t [.., C, D]
    head(z, t, views) -> logits [B,C] (+ per-sample logits)

Parameter names follow the recipe's component keys, so stages select them with globs:
``backbone.*``, ``prompts.<name>.*``, ``adapters.<name>[.<stream>].*``, ``router.*``,
``head.*``, ``losses.<name>.*``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from einops import rearrange
from torch import nn

from .build import build_component
from .errors import ClapkitError
from .interfaces import Adapter, Backbone, BuildContext, Head, Loss, Prompt, Router
from .recipe import ComponentSpec, Recipe
from .sections import LossKeys


class Pipeline(nn.Module):
    """The model of a run. ``forward(batch)`` returns the outputs dict losses read."""

    def __init__(self, *, backbone: Backbone, prompts: dict[str, Prompt],
                 adapters: dict[str, nn.Module], adapter_places: dict[str, str],
                 head: Head, head_view: str, losses: dict[str, Loss],
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
        self.register_buffer("task_of_class", torch.as_tensor(task_of_class, dtype=torch.long),
                             persistent=False)

    # -- structure ---------------------------------------------------------------------------

    def _adapters_at(self, place: str) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.adapters.items() if self.adapter_places[n] == place]

    @property
    def changes_image_encoder(self) -> bool:
        return any(p.changes_image_encoder for p in self.prompts.values())

    def image_encoder_trainable(self) -> bool:
        """True when image features cannot come from the cache in the current state."""
        return self.changes_image_encoder or any(
            p.requires_grad for p in self.backbone.parameters())

    def available_outputs(self) -> set[str]:
        out = {"logits", "z", "text", "features", "stream_z", "views"}
        out |= {f"views.{n}" for n in self.prompts}
        if self._adapters_at("text") or self.num_samples > 1:
            out.add("sample_logits")
        return out

    # -- forward -----------------------------------------------------------------------------

    def encode_frames(self, streams: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-frame image features ``{s: [B,T,D]}`` from pixels ``{s: [B,T,3,H,W]}``."""
        deep = None
        for p in self.prompts.values():
            if p.changes_image_encoder:
                deep = p.vision_prompts()
        grad = torch.is_grad_enabled() and self.image_encoder_trainable()
        out = {}
        with torch.set_grad_enabled(grad):
            for s in self.streams:
                x = streams[s]
                b = x.shape[0]
                flat = rearrange(x, "b t c h w -> (b t) c h w")
                f = (self.backbone.encode_image_prompted(flat, deep) if deep is not None
                     else self.backbone.encode_image(flat))
                out[s] = rearrange(f.float(), "(b t) d -> b t d", b=b)
        return out

    def visual(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor,
                                                                 dict[str, torch.Tensor]]:
        """Image adapters, video adapters and fusion: ``{s: [B,T,D]} -> z [B,D]``."""
        return visual_forward(self.adapters, self.adapter_places, self.streams, features)

    def visual_encoder_modules(self) -> nn.Module:
        """A module ``features {s: [B,T,D]} -> z`` over the visual adapters only (shared
        weights, not a child of the pipeline): what MoCo-style losses deep-copy as their
        momentum encoder."""
        return VisualPart(self.adapters, self.adapter_places, self.streams)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        features = batch.get("features")
        if features is None:
            features = self.encode_frames(batch["streams"])
        z, stream_z = self.visual(features)
        views: dict[str, torch.Tensor] = {}
        aux: dict[str, torch.Tensor] = {}
        for name, prompt in self.prompts.items():
            po = prompt(z if prompt.needs_image_features else None)
            views[name] = po.text
            aux.update({f"{name}.{k}": v for k, v in po.aux.items()})
        text = views[self.head_view]
        distributions = {}
        text_adapters = self._adapters_at("text")
        if text_adapters:
            alloc = (self.router(z, self.num_samples, self.task_of_class,
                                 batch.get("tasks_present"))
                     if self.router is not None else None)
            for name, ta in text_adapters:
                res = ta(text, z, {"num_samples": self.num_samples, "allocation": alloc,
                                   "task_of_class": self.task_of_class,
                                   "label": batch.get("label")})
                text = res.text
                if res.distribution is not None:
                    distributions[name] = res.distribution
                aux.update({f"{name}.{k}": v for k, v in res.aux.items()})
        head_out = self.head(z, text, views)
        return {"logits": head_out.logits, "sample_logits": head_out.sample_logits,
                "z": z, "stream_z": stream_z, "features": features, "views": views,
                "text": text, "aux": aux, "distributions": distributions}

    def compute_losses(self, outputs: dict[str, Any], batch: dict[str, Any],
                       epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``total = sum_i w_i(epoch) * L_i``; every term is returned for logging."""
        total = outputs["logits"].new_zeros(())
        terms: dict[str, float] = {}
        for name, loss in self.losses.items():
            w = self.loss_keys[name].weight_at(epoch)
            if w == 0.0:
                terms[name] = 0.0
                continue
            value = loss(outputs, batch)
            terms[name] = float(value.detach())
            total = total + w * value
        terms["total"] = float(total.detach())
        return total, terms


def visual_forward(adapters: nn.ModuleDict, places: dict[str, str], streams: tuple[str, ...],
                   features: dict[str, torch.Tensor]) -> tuple[torch.Tensor,
                                                                dict[str, torch.Tensor]]:
    feats = dict(features)
    for name, mod in adapters.items():
        if places[name] == "image":
            for s, m in mod.items():
                feats[s] = m(feats[s])
    video = [mod for name, mod in adapters.items() if places[name] == "video"]
    stream_z: dict[str, torch.Tensor] = {}
    for s in streams:
        owner = next((mod[s] for mod in video if s in mod), None)
        stream_z[s] = owner(feats[s]) if owner is not None else feats[s].mean(1)
    fusion = [mod for name, mod in adapters.items() if places[name] == "fusion"]
    z = fusion[0](stream_z) if fusion else stream_z[streams[0]]
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

def build_pipeline(recipe: Recipe, ctx: BuildContext, backbone: Backbone | None = None
                   ) -> Pipeline:
    """Build every component of ``recipe`` in assembly order and compose them.

    ``ctx`` must already hold the class names, streams and class->task map (from the data);
    ``backbone`` may be passed in when the caller built it already (cache, data transforms).
    """
    if backbone is None:
        backbone = build_component(recipe.backbone, ctx)
    ctx.backbone = backbone
    prompts = {n: build_component(s, ctx) for n, s in recipe.prompts.items()}
    adapters: dict[str, nn.Module] = {}
    places: dict[str, str] = {}
    for name, spec in recipe.adapters.items():
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
    head_view = recipe.head.keys.view or next(iter(recipe.prompts))
    if head_view not in prompts:
        raise ClapkitError(f"{recipe.head.file}: head.view: no prompt named '{head_view}' "
                           f"(prompts: {', '.join(prompts)})")
    head = build_component(recipe.head, ctx)
    losses = {n: build_component(s, ctx) for n, s in recipe.losses.items()}
    pipe = Pipeline(backbone=backbone, prompts=prompts, adapters=adapters,
                    adapter_places=places, head=head, head_view=head_view, losses=losses,
                    loss_keys={n: s.keys for n, s in recipe.losses.items()},
                    streams=ctx.streams, router=router,
                    task_of_class=ctx.task_of_class or [0] * ctx.num_classes,
                    num_samples=recipe.run.num_samples)
    _check_loss_needs(recipe.losses, losses, pipe.available_outputs())
    for loss in losses.values():
        loss.bind(pipe)
    return pipe


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
