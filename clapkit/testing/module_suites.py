"""Suites for the module kinds: prompt, adapter, router, head, loss (the backbone's is in
:mod:`.backbone_suite`).

Each calls its kind exactly as the pipeline does (``clapkit/pipeline.py``): prompts get
:class:`ImageInputs` or None and the step, text adapters ``(text, z, step)``, routers
``(z, step)``, losses the step outputs under the names a pipeline declares.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..interfaces import (Adapter, Head, HeadOutput, ImageInputs, Loss, Prompt, PromptOutput,
                          Router, TextAdapterOutput)
from ..pipeline import BASE_OUTPUTS
from . import context as C
from .base import ModuleContract, expect_close, expect_shape, who

B, S = C.B, C.S


class PromptContract(ModuleContract):
    kind = "prompt"
    base = Prompt

    def inputs(self, m, ctx, g):
        if not m.needs_image_features:
            return (None,)
        d = ctx.embed_dim
        return (ImageInputs(z=torch.randn(B, d, generator=g),
                            raw={s: torch.randn(B, d, generator=g) for s in ctx.streams}),)

    def call(self, m, args, step):
        return m(args[0], step), m.vision_prompts()

    def tensors(self, out):
        po, vision = out
        return [po.text, *[po.aux[k] for k in sorted(po.aux)],
                *super().tensors(list(vision) if isinstance(vision, (list, tuple)) else vision)]

    def check_output(self, entry, m, out, ctx, step):
        out = out[0]
        assert isinstance(out, PromptOutput), \
            f"{who(entry)}: returned {type(out).__name__}, expected PromptOutput"
        c, d = ctx.num_classes, ctx.embed_dim
        expect_shape(entry, "text", out.text, (c, d), (B, c, d))
        _check_aux(entry, m, out.aux)

    def test_vision_prompts_declared(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        assert (m.vision_prompts() is not None) == bool(m.changes_image_encoder), \
            f"{who(entry)}: vision_prompts() must be given exactly when changes_image_encoder"

    def test_refresh_keeps_the_output(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        before = self.tensors(self.run(m, contract_ctx))
        m.refresh()
        after = self.tensors(self.run(m, contract_ctx))
        expect_close(entry, "text before and after refresh() (same text tower)", after[0],
                     before[0])


class AdapterContract(ModuleContract):
    kind = "adapter"
    base = Adapter

    def place(self, entry) -> str:
        return entry.meta.get("place", "image")

    def inputs(self, m, ctx, g):
        d, t = ctx.embed_dim, ctx.num_frames
        if m.place in ("image", "video"):
            return (torch.randn(B, t, d, generator=g),)
        if m.place == "fusion":
            return ({s: torch.randn(B, d, generator=g) for s in ctx.streams},)
        return torch.randn(ctx.num_classes, d, generator=g), torch.randn(B, d, generator=g)

    def call(self, m, args, step):
        return m(*args, step) if m.place == "text" else m(*args)

    def tensors(self, out):
        if not isinstance(out, TextAdapterOutput):
            return super().tensors(out)
        ts = [out.text, *[out.aux[k] for k in sorted(out.aux)]]
        if getattr(out, "queries", None) is not None:
            ts.append(out.queries)
        if out.distribution is not None:
            for attr in ("mean", "stddev"):
                try:
                    ts.append(getattr(out.distribution, attr))
                except NotImplementedError:
                    pass
        return [t for t in ts if torch.is_tensor(t) and t.is_floating_point()]

    def check_output(self, entry, m, out, ctx, step):
        c, d, t = ctx.num_classes, ctx.embed_dim, ctx.num_frames
        if m.place == "image":
            expect_shape(entry, "image adapter output", out, (B, t, d))
        elif m.place in ("video", "fusion"):
            expect_shape(entry, f"{m.place} adapter output", out, (B, d))
        else:
            _check_text_output(entry, m, out, c, d)

    def test_place_matches_registration(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        assert m.place == self.place(entry), \
            f"{who(entry)}: module place '{m.place}' differs from registered '{self.place(entry)}'"

    def test_text_adapter_takes_per_image_text(self, entry, contract_ctx):
        if self.place(entry) != "text":
            return
        m = self.make(entry, contract_ctx).eval()
        c, d = contract_ctx.num_classes, contract_ctx.embed_dim
        g = torch.Generator().manual_seed(5)
        out = m(torch.randn(B, c, d, generator=g), torch.randn(B, d, generator=g),
                C.step_for(contract_ctx))
        _check_text_output(entry, m, out, c, d)


class RouterContract(ModuleContract):
    kind = "router"
    base = Router

    def inputs(self, m, ctx, g):
        return (torch.randn(B, ctx.embed_dim, generator=g),)

    def call(self, m, args, step):
        return m(args[0], step)

    def check_output(self, entry, m, out, ctx, step):
        n_tasks = max(ctx.task_of_class) + 1
        expect_shape(entry, "allocation", out, (n_tasks,))
        assert out.dtype == torch.long, f"{who(entry)}: allocation dtype {out.dtype}, expected long"
        assert (out >= 0).all() and out.sum() > 0, f"{who(entry)}: allocation {out.tolist()}"
        if step.tasks_present is not None:
            assert (out[step.tasks_present] >= 1).all(), (
                f"{who(entry)}: tasks present in the batch {step.tasks_present.tolist()} got "
                f"allocation {out.tolist()}; each needs at least one sample")

    def test_allocation_without_labels(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        step = C.step_for(contract_ctx, training=False)
        assert step.label is None
        self.check_output(entry, m, self.run(m, contract_ctx, step), contract_ctx, step)

    def test_every_present_task_gets_a_sample(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).train()
        step = C.step_for(contract_ctx, training=True, samples=1)
        self.check_output(entry, m, self.run(m, contract_ctx, step), contract_ctx, step)


class HeadContract(ModuleContract):
    kind = "head"
    base = Head

    def inputs(self, m, ctx, g):
        z = torch.randn(B, ctx.embed_dim, generator=g).requires_grad_()
        text = torch.randn(ctx.num_classes, ctx.embed_dim, generator=g)
        return z, text

    def call(self, m, args, step):
        z, text = args
        return m(z, text, {"text": text})

    def tensors(self, out):
        return [t for t in (out.logits, out.sample_logits) if t is not None]

    def check_output(self, entry, m, out, ctx, step):
        assert isinstance(out, HeadOutput), \
            f"{who(entry)}: returned {type(out).__name__}, expected HeadOutput"
        expect_shape(entry, "logits", out.logits, (B, ctx.num_classes))

    def test_per_image_text(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        c, d = contract_ctx.num_classes, contract_ctx.embed_dim
        text = torch.randn(B, c, d)
        out = m(torch.randn(B, d), text, {"text": text})
        expect_shape(entry, "logits for per-image text [B,C,D]", out.logits, (B, c))

    def test_monte_carlo_samples_give_sample_logits(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        c, d = contract_ctx.num_classes, contract_ctx.embed_dim
        text = torch.randn(S, B, c, d)
        out = m(torch.randn(B, d), text, {"text": text})
        expect_shape(entry, "logits for text samples [S,B,C,D]", out.logits, (B, c))
        expect_shape(entry, "sample_logits for text samples [S,B,C,D]", out.sample_logits,
                     (S, B, c))

    def test_gradient_reaches_image_features(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        z = torch.randn(B, contract_ctx.embed_dim, requires_grad=True)
        text = torch.randn(contract_ctx.num_classes, contract_ctx.embed_dim)
        m(z, text, {"text": text}).logits.sum().backward()
        assert z.grad is not None and torch.isfinite(z.grad).all(), \
            f"{who(entry)}: no finite gradient reaches z"


_NEED = re.compile(r"^(views|distributions)\.[^.]+$|^aux\.[^.]+\.[^.]+$")
#: names a loss may read without any component declaring them
LOSS_BASE_NEEDS = frozenset(BASE_OUTPUTS) | {"sample_logits", "sample_mask"}


class LossContract(ModuleContract):
    """Losses are modules: a stateful one (a MoCo queue) must checkpoint like any other."""

    kind = "loss"
    base = Loss

    def make(self, entry, ctx, grow: bool = True, **changes):
        m = super().make(entry, ctx, grow=grow, **changes)
        m.bind(_TinyPipeline(ctx))
        # meta ``example_outputs(ctx) -> dict``: outputs of other shapes than the defaults
        m._contract_examples = entry.meta.get("example_outputs")
        return m

    def exercise(self, entry, obj, ctx) -> None:
        obj.bind(_TinyPipeline(ctx))
        obj._contract_examples = entry.meta.get("example_outputs")
        super().exercise(entry, obj, ctx)

    def inputs(self, m, ctx, g):
        return _loss_inputs(m, ctx)

    def call(self, m, args, step):
        outputs, batch = args
        return m(outputs, batch)

    def check_output(self, entry, m, out, ctx, step):
        assert torch.is_tensor(out) and out.dim() == 0, \
            f"{who(entry)}: returned {getattr(out, 'shape', type(out))}, expected a scalar"
        assert torch.isfinite(out), f"{who(entry)}: loss value {out}"

    def test_needs_are_outputs_a_pipeline_declares(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        for need in m.needs:
            assert need in LOSS_BASE_NEEDS or _NEED.match(need), (
                f"{who(entry)}: needs '{need}', which no pipeline publishes; allowed: "
                f"{', '.join(sorted(LOSS_BASE_NEEDS))}, views.<prompt>, "
                f"aux.<section>.<key>, distributions.<text adapter>")

    def test_gradient_reaches_the_outputs(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).train()
        outputs, batch = _loss_inputs(m, contract_ctx)
        value = m(outputs, batch)
        self.check_output(entry, m, value, contract_ctx, None)
        assert value.requires_grad, f"{who(entry)}: does not depend on the outputs it reads"
        value.backward()
        assert any(t.grad is not None for t in _leaves(outputs)), \
            f"{who(entry)}: no gradient reached the step outputs"


# --- helpers -----------------------------------------------------------------------------------

def _check_aux(entry, m, aux: dict[str, Any]) -> None:
    declared = set(getattr(m, "aux_keys", ()))
    for k, v in aux.items():
        assert k in declared, (f"{who(entry)}: aux output '{k}' is not declared in aux_keys "
                               f"{sorted(declared)} (a loss could never need it)")
        assert torch.is_tensor(v), f"{who(entry)}: aux output '{k}' is not a tensor"


def _check_text_output(entry, m, out, c: int, d: int) -> None:
    assert isinstance(out, TextAdapterOutput), \
        f"{who(entry)}: returned {type(out).__name__}, expected TextAdapterOutput"
    t = out.text
    assert torch.is_tensor(t) and (tuple(t.shape) == (B, c, d) or (
        t.dim() == 4 and tuple(t.shape[1:]) == (B, c, d))), (
        f"{who(entry)}: text has shape {tuple(getattr(t, 'shape', ()))}, expected "
        f"{(B, c, d)} or (S, {B}, {c}, {d})")
    if out.sample_mask is not None:
        s = t.shape[0] if t.dim() == 4 else 1
        expect_shape(entry, "sample_mask", out.sample_mask, (s, c))
        assert out.sample_mask.dtype == torch.bool, f"{who(entry)}: sample_mask is not bool"
    if getattr(out, "queries", None) is not None:
        assert out.queries.dim() == 2 and out.queries.shape[1] == d, (
            f"{who(entry)}: queries has shape {tuple(out.queries.shape)}, expected (Q, {d})")
    _check_aux(entry, m, out.aux)


def _loss_inputs(m: Loss, ctx) -> tuple[dict[str, Any], dict[str, Any]]:
    outputs, batch = C.example_outputs(ctx, tuple(m.needs))
    extra = getattr(m, "_contract_examples", None)
    if extra is not None:
        for k, v in extra(ctx).items():
            if isinstance(v, dict) and isinstance(outputs.get(k), dict):
                outputs[k].update(v)
            else:
                outputs[k] = v
    return outputs, batch


def _leaves(obj: Any) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj] if obj.is_leaf and obj.requires_grad else []
    if isinstance(obj, torch.distributions.Distribution):
        return [t for v in vars(obj).values() for t in _leaves(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _leaves(v)]
    return []


class _TinyPipeline(nn.Module):
    """What ``Loss.bind`` receives in the suite: visual part = mean over frames and streams."""

    def __init__(self, ctx) -> None:
        super().__init__()
        self.proj = nn.Linear(ctx.embed_dim, ctx.embed_dim)
        self.streams = ctx.streams

    def visual_encoder_modules(self) -> nn.Module:
        return _MeanVisual(self.proj)


class _MeanVisual(nn.Module):
    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(torch.stack([f.mean(1) for f in features.values()]).mean(0))

