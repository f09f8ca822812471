"""Reusable contract suites, one per component kind (DESIGN.md section 6).

Subclass a suite in a test module named ``test_*.py``; the clapkit pytest plugin parametrises
its ``entry`` fixture over every registered component of the suite's ``kind``, or only over
``components = ["my_name"]`` when the subclass sets it::

    from clapkit.testing import HeadContract

    class TestMyHead(HeadContract):
        components = ["my_head"]

Fixtures used: ``entry`` (the :class:`~clapkit.registry.ComponentEntry`), ``contract_ctx``
(a :class:`~clapkit.interfaces.BuildContext` with a small backbone), ``clapkit_host``.
"""

from __future__ import annotations

import copy
import pickle
import random
from typing import Any, ClassVar

import attrs
import pytest
import torch
from torch import nn

from ..config import structure
from ..data.base import ClipDataset, DatasetSource
from ..errors import RecipeError
from ..hookspecs import EVENT_HOOKS
from ..interfaces import (Adapter, Backbone, HeadOutput, Loss, Prompt, PromptOutput, Router,
                          TextAdapterOutput, class_quota)
from . import context as C

B, S = 4, 3


class Contract:
    """Checks every kind shares: config class, summary, option validation, build."""

    kind: ClassVar[str] = ""
    components: ClassVar[list[str] | None] = None

    def test_has_summary(self, entry):
        assert entry.summary.strip(), f"{entry.kind} '{entry.name}' has no one-line summary"

    def test_config_is_frozen_attrs_and_picklable(self, entry, contract_ctx):
        cfg = C.config_for(entry, contract_ctx)
        assert attrs.has(type(cfg))
        assert pickle.loads(pickle.dumps(cfg)) == cfg
        fields = attrs.fields(type(cfg))
        if fields:
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(cfg, fields[0].name, getattr(cfg, fields[0].name))

    def test_unknown_option_is_an_error_naming_the_key(self, entry, contract_ctx):
        opts = {**C.options_for(entry, contract_ctx), "no_such_option_zz": 1}
        with pytest.raises(RecipeError, match="no_such_option_zz"):
            structure(entry.config_cls, opts, file="recipe.toml", key=entry.kind)

    def test_builds(self, entry, contract_ctx):
        assert self.make(entry, contract_ctx) is not None

    # helpers ---------------------------------------------------------------------------------
    def make(self, entry, ctx, **changes) -> Any:
        return C.build(entry, ctx, **changes)


class ModuleContract(Contract):
    """Checks for components that are ``nn.Module``s: state round-trip and determinism."""

    def run(self, module: nn.Module, ctx) -> Any:  # -> tensor or tuple of tensors
        raise NotImplementedError

    def test_is_module(self, entry, contract_ctx):
        assert isinstance(self.make(entry, contract_ctx), nn.Module)

    def test_state_dict_round_trip(self, entry, contract_ctx):
        torch.manual_seed(1)
        a = self.make(entry, contract_ctx).eval()
        torch.manual_seed(2)
        b = self.make(entry, contract_ctx).eval()
        b.load_state_dict(copy.deepcopy(a.state_dict()))
        _assert_same(self.run(a, contract_ctx), self.run(b, contract_ctx))

    def test_deterministic_under_seed(self, entry, contract_ctx):
        outs = []
        for _ in range(2):
            torch.manual_seed(3)
            m = self.make(entry, contract_ctx).eval()
            torch.manual_seed(4)
            outs.append(self.run(m, contract_ctx))
        _assert_same(*outs)

    def test_gradients_reach_only_trainable_parameters(self, entry, contract_ctx):
        torch.manual_seed(0)
        m = self.make(entry, contract_ctx).train()
        out = _first_tensor(self.run(m, contract_ctx))
        if not out.requires_grad:
            assert not any(p.requires_grad for p in m.parameters()), \
                "trainable parameters exist but the output does not depend on them"
            return
        out.float().pow(2).mean().backward()
        for name, p in m.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, f"frozen parameter {name} received a gradient"
        backbone = contract_ctx.backbone
        for name, p in backbone.named_parameters():
            assert p.grad is None, f"backbone parameter {name} received a gradient"

    @pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    def test_device_move(self, entry, contract_ctx, device):
        m = self.make(entry, contract_ctx).eval().to(device)
        ctx = attrs.evolve(contract_ctx, device=torch.device(device))
        if device != "cpu":
            ctx.backbone = ctx.backbone.to(device)
        try:
            out = _first_tensor(self.run(m, ctx))
            assert out.device.type == device
        finally:
            contract_ctx.backbone.to("cpu")


class BackboneContract(ModuleContract):
    kind = "backbone"

    def run(self, m: Backbone, ctx):
        dev = next(m.parameters()).device
        x = torch.randn(2, 3, m.image_size, m.image_size, generator=torch.Generator()
                        .manual_seed(0)).to(dev)
        return m.encode_image(x), m.encode_text(m.tokenize(["a cat", "a dog"]).to(dev))

    def test_is_a_backbone(self, entry, contract_ctx):
        assert isinstance(self.make(entry, contract_ctx), Backbone)

    def test_shapes(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        img, txt = self.run(m, contract_ctx)
        assert img.shape == (2, m.embed_dim) and txt.shape == (2, m.embed_dim)
        tok = m.tokenize(["a", "b c", "d"])
        assert tok.dtype == torch.long and tok.shape[0] == 3
        assert m.logit_scale.numel() == 1 and float(m.logit_scale) > 0

    def test_transforms_make_model_input(self, entry, contract_ctx):
        from PIL import Image
        m = self.make(entry, contract_ctx)
        im = Image.new("RGB", (50, 37), (120, 30, 200))
        for train in (True, False):
            t = m.transform(train)(im)
            assert t.shape == (3, m.image_size, m.image_size)

    def test_fingerprint_is_stable(self, entry, contract_ctx):
        torch.manual_seed(0)
        a = self.make(entry, contract_ctx)
        b = copy.deepcopy(a)
        assert isinstance(a.fingerprint(), str) and a.fingerprint() == b.fingerprint()


class PromptContract(ModuleContract):
    kind = "prompt"

    def run(self, m: Prompt, ctx):
        z = torch.randn(B, ctx.embed_dim, generator=torch.Generator().manual_seed(0))
        return m(z.to(ctx.device) if m.needs_image_features else None).text

    def test_output_shape(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        z = torch.randn(B, contract_ctx.embed_dim)
        out = m(z if m.needs_image_features else None)
        assert isinstance(out, PromptOutput)
        c, d = contract_ctx.num_classes, contract_ctx.embed_dim
        assert tuple(out.text.shape) in ((c, d), (B, c, d))
        for k, v in out.aux.items():
            assert torch.is_tensor(v), f"aux output {k} is not a tensor"

    def test_vision_prompts_declared(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        assert (m.vision_prompts() is not None) == bool(m.changes_image_encoder)


class AdapterContract(ModuleContract):
    kind = "adapter"

    def place(self, entry) -> str:
        return entry.meta.get("place", "image")

    def run(self, m: Adapter, ctx):
        g = torch.Generator().manual_seed(0)
        d, t, dev = ctx.embed_dim, ctx.num_frames, ctx.device
        if m.place == "image":
            return m(torch.randn(B, t, d, generator=g).to(dev))
        if m.place == "video":
            return m(torch.randn(B, t, d, generator=g).to(dev))
        if m.place == "fusion":
            return m({s: torch.randn(B, d, generator=g).to(dev) for s in ctx.streams})
        text = torch.randn(ctx.num_classes, d, generator=g).to(dev)
        z = torch.randn(B, d, generator=g).to(dev)
        return m(text, z, {"num_samples": S, "allocation": None,
                           "task_of_class": torch.tensor(ctx.task_of_class, device=dev),
                           "label": None}).text

    def test_place_matches_registration(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        assert isinstance(m, Adapter)
        assert m.place == self.place(entry), "module place differs from registered place"

    def test_output_shape(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        out = self.run(m, contract_ctx)
        c, d, t = contract_ctx.num_classes, contract_ctx.embed_dim, contract_ctx.num_frames
        want = {"image": [(B, t, d)], "video": [(B, d)], "fusion": [(B, d)],
                "text": [(B, c, d), (S, B, c, d)]}[m.place]
        assert tuple(out.shape) in want, f"{m.place} adapter gave {tuple(out.shape)}"

    def test_text_adapter_returns_output_object(self, entry, contract_ctx):
        if self.place(entry) != "text":
            return
        m = self.make(entry, contract_ctx)
        d = contract_ctx.embed_dim
        res = m(torch.randn(contract_ctx.num_classes, d), torch.randn(B, d),
                {"num_samples": S, "allocation": None,
                 "task_of_class": torch.tensor(contract_ctx.task_of_class), "label": None})
        assert isinstance(res, TextAdapterOutput)


class RouterContract(ModuleContract):
    kind = "router"

    def run(self, m: Router, ctx):
        z = torch.randn(B, ctx.embed_dim, generator=torch.Generator().manual_seed(0))
        out = m(z.to(ctx.device), S, torch.tensor(ctx.task_of_class, device=ctx.device))
        return out.float().requires_grad_(False)

    def test_allocation_without_labels(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        n_tasks = max(contract_ctx.task_of_class) + 1
        out = m(torch.randn(B, contract_ctx.embed_dim), S, torch.tensor(contract_ctx.task_of_class))
        assert out.dtype == torch.long and out.shape == (n_tasks,) and (out >= 0).all()

    def test_every_present_task_gets_a_sample(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        present = torch.tensor([0, 1])
        out = m(torch.randn(B, contract_ctx.embed_dim), 1,
                torch.tensor(contract_ctx.task_of_class), present)
        assert (out[present] >= 1).all()


class HeadContract(ModuleContract):
    kind = "head"

    def run(self, m, ctx):
        g = torch.Generator().manual_seed(0)
        z = torch.randn(B, ctx.embed_dim, generator=g).to(ctx.device).requires_grad_()
        text = torch.randn(ctx.num_classes, ctx.embed_dim, generator=g).to(ctx.device)
        return m(z, text, {"text": text}).logits

    def test_logits_shape(self, entry, contract_ctx):
        out = self.make(entry, contract_ctx)(torch.randn(B, contract_ctx.embed_dim),
                                             torch.randn(contract_ctx.num_classes,
                                                         contract_ctx.embed_dim), {})
        assert isinstance(out, HeadOutput)
        assert out.logits.shape == (B, contract_ctx.num_classes)

    def test_monte_carlo_samples_give_sample_logits(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        c, d = contract_ctx.num_classes, contract_ctx.embed_dim
        text = torch.randn(S, B, c, d)
        out = m(torch.randn(B, d), text, {"text": text})
        assert out.logits.shape == (B, c)
        assert out.sample_logits is not None and out.sample_logits.shape == (S, B, c)

    def test_gradient_reaches_image_features(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        z = torch.randn(B, contract_ctx.embed_dim, requires_grad=True)
        text = torch.randn(contract_ctx.num_classes, contract_ctx.embed_dim)
        m(z, text, {"text": text}).logits.sum().backward()
        assert z.grad is not None and torch.isfinite(z.grad).all()


class LossContract(Contract):
    kind = "loss"

    def views_needed(self, m: Loss) -> tuple[str, ...]:
        return tuple(n.split(".", 1)[1] for n in m.needs if n.startswith("views."))

    def test_is_a_loss_with_known_needs(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        assert isinstance(m, Loss)
        known = {"logits", "sample_logits", "z", "text", "features", "stream_z", "views"}
        for need in m.needs:
            assert need in known or need.startswith(("views.", "aux.")), \
                f"loss needs unknown output '{need}'"

    def test_scalar_finite_and_differentiable(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).train()
        m.bind(_TinyPipeline(contract_ctx))
        outputs, batch = C.example_outputs(contract_ctx, views=self.views_needed(m))
        value = m(outputs, batch)
        assert value.dim() == 0 and torch.isfinite(value)
        assert value.requires_grad, "loss does not depend on the outputs it reads"
        value.backward()
        grads = [t.grad for t in _leaves(outputs) if t.grad is not None]
        assert grads, "no gradient reached the step outputs"


class SelectorContract(Contract):
    kind = "selector"

    def test_selects_class_balanced_unique_indices(self, entry, contract_ctx):
        sel = self.make(entry, contract_ctx)
        g = torch.Generator().manual_seed(0)
        labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
        feats = torch.randn(len(labels), contract_ctx.embed_dim, generator=g)
        scores = {"energy": torch.randn(len(labels), generator=g),
                  "variance": torch.rand(len(labels), generator=g),
                  "entropy": torch.rand(len(labels), generator=g),
                  "logits": torch.randn(S, len(labels), 3, generator=g)}
        idx = sel.select(feats, labels, 9, scores)
        assert idx.dtype == torch.long and idx.dim() == 1
        assert len(set(idx.tolist())) == len(idx) == 9
        assert ((idx >= 0) & (idx < len(labels))).all()
        got = torch.bincount(labels[idx], minlength=3).tolist()
        assert got == [class_quota(labels, 9)[c] for c in range(3)]

    def test_budget_larger_than_data_keeps_everything(self, entry, contract_ctx):
        sel = self.make(entry, contract_ctx)
        labels = torch.tensor([0, 0, 1])
        idx = sel.select(torch.randn(3, contract_ctx.embed_dim), labels, 10,
                         {"energy": torch.randn(3), "variance": torch.rand(3),
                          "entropy": torch.rand(3), "logits": torch.randn(S, 3, 2)})
        assert sorted(idx.tolist()) == [0, 1, 2]


class DatasetContract(Contract):
    kind = "dataset"

    def test_source_lists_items(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        assert isinstance(src, DatasetSource)
        assert src.classes and src.splits()
        for split in src.splits():
            refs = src.refs(split)
            assert all(0 <= r.label < len(src.classes) for r in refs)
            assert len({r.id for r in refs}) == len(refs), f"duplicate ids in split {split}"

    def test_items_follow_the_item_contract(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        split = src.splits()[0]
        bb = contract_ctx.backbone
        ds = ClipDataset(src, split, bb.transform(False), train=False)
        item = ds[0]
        assert set(item) >= {"id", "label", "index", "streams"}
        assert tuple(item["streams"]) == tuple(src.streams)
        for x in item["streams"].values():
            assert x.shape == (src.num_frames, 3, bb.image_size, bb.image_size)

    def test_loading_is_deterministic(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        ref = src.refs(src.splits()[0])[0]
        a = src.load(ref, True, random.Random(5))
        b = src.load(ref, True, random.Random(5))
        for s in src.streams:
            assert [im.tobytes() for im in a[s]] == [im.tobytes() for im in b[s]]

    def test_fingerprint_is_stable(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        split = src.splits()[0]
        assert src.fingerprint(split) == self.make(entry, contract_ctx).fingerprint(split)


class LoggerContract(Contract):
    kind = "logger"

    def _run(self, tmp_path, rank: int) -> Any:
        import types
        return types.SimpleNamespace(out_dir=tmp_path, rank=rank, recipe=None,
                                     class_names=list(C.CLASS_NAMES), num_tasks=2)

    def _fire_all(self, host, run) -> None:
        metrics = {"train/war": 0.5, "train/uar": 0.4, "valid/war": 0.5, "valid/uar": 0.45,
                   "best/valid_war": 0.5, "best/valid_uar": 0.45, "best/train_war": 0.5,
                   "best/train_uar": 0.4, "loss/total": 1.0, "loss/ce": 1.0, "lr/default": 0.1,
                   "valid/confusion": [[1] * 5 for _ in range(5)], "select_split": "valid"}
        h = host.hook
        h.clapkit_run_start(run=run)
        h.clapkit_task_start(run=run, task=0, classes=[0, 1])
        h.clapkit_stage_start(run=run, task=0, stage="s1", trainable=["head.w"])
        h.clapkit_epoch_end(run=run, task=0, stage="s1", epoch=0, metrics=metrics)
        h.clapkit_stage_end(run=run, task=0, stage="s1")
        h.clapkit_checkpoint_saved(run=run, path=str(run.out_dir / "ckpt.pt"))
        h.clapkit_task_end(run=run, task=0, metrics={"acc_seen": 0.5, "acc_task/0": 0.5})
        h.clapkit_run_end(run=run, summary={"final/valid_war": 0.5, "final/valid_uar": 0.45,
                                            "best/valid_uar": 0.45})

    def test_implements_event_hooks(self, entry, contract_ctx, tmp_path):
        from ..plugins import PluginHost
        obj = self.make(entry, contract_ctx)
        host = PluginHost()
        host.register_listener(obj)
        impl = {c.name for c in host.pm.get_hookcallers(obj) or []}
        assert impl & set(EVENT_HOOKS), "logger implements none of the event hooks"
        self._fire_all(host, self._run(tmp_path, 0))

    def test_non_zero_rank_writes_nothing(self, entry, contract_ctx, tmp_path, capsys):
        from ..plugins import PluginHost
        host = PluginHost()
        host.register_listener(self.make(entry, contract_ctx))
        self._fire_all(host, self._run(tmp_path, 1))
        assert not any(tmp_path.iterdir()), "rank 1 wrote files"
        assert capsys.readouterr().out == "", "rank 1 printed output"


# --- helpers -----------------------------------------------------------------------------------

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


def _leaves(obj: Any) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj] if obj.is_leaf and obj.requires_grad else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _leaves(v)]
    return []


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, (tuple, list)):
        for x, y in zip(a, b):
            _assert_same(x, y)
        return
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


SUITES: dict[str, type[Contract]] = {
    s.kind: s for s in (BackboneContract, PromptContract, AdapterContract, RouterContract,
                        HeadContract, LossContract, SelectorContract, DatasetContract,
                        LoggerContract)
}
