"""The checks every suite shares (options) and every module suite shares (state, gradients,
determinism, dtypes, the task lifecycle).

A module suite says how to call its kind: ``inputs`` (random example arguments, built as the
engine builds them), ``call`` (one forward), ``tensors`` (the float outputs to compare and
back-propagate) and ``check_output`` (the kind's shape rules, with messages that name the
component and the expected and actual shapes).
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import types
import typing
from typing import Any, ClassVar

import attrs
import pytest
import torch
from torch import nn

from ..config import convert, structure
from ..errors import ClapkitError, RecipeError
from ..interfaces import Component, StepContext
from ..recipe import COMPONENT_SECTIONS
from . import context as C

#: values tried for an option of the wrong type: the first one its type rejects is used
_WRONG_VALUES: tuple[Any, ...] = ("zz_bad_value", {"zz_bad": 1}, 1.5, True)


def core_keys(kind: str) -> set[str]:
    """The keys the core reads from a ``kind`` table (``plugin`` and its section's keys):
    a plugin option of the same name would never reach the plugin."""
    keys = {"plugin"}
    for _section, (k, keys_cls, _named, _req) in COMPONENT_SECTIONS.items():
        if k == kind:
            keys |= {f.name for f in attrs.fields(keys_cls)}
    return keys


def who(entry) -> str:
    return f"{entry.kind} '{entry.name}'"


def expect_shape(entry, what: str, tensor: Any, *wanted: tuple[int, ...]) -> None:
    """Assert ``tensor`` has one of the ``wanted`` shapes; the message names the component,
    the output and both shapes."""
    assert torch.is_tensor(tensor), f"{who(entry)}: {what} is {type(tensor).__name__}, " \
                                    f"expected a tensor of shape {' or '.join(map(str, wanted))}"
    got = tuple(tensor.shape)
    assert got in wanted, (f"{who(entry)}: {what} has shape {got}, expected "
                           f"{' or '.join(str(w) for w in wanted)}")


def expect_close(entry, what: str, got: torch.Tensor, want: torch.Tensor,
                 atol: float = 1e-5) -> None:
    """Assert ``got`` has ``want``'s shape and values (max abs difference <= ``atol``); the
    message names the component, the comparison and the difference."""
    expect_shape(entry, what, got, tuple(want.shape))
    worst = float((got.detach().float() - want.detach().float()).abs().max()) \
        if got.numel() else 0.0
    assert worst <= atol, f"{who(entry)}: {what}: max abs difference {worst:.3g} > {atol:g}"


class Contract:
    """Checks every kind shares: config class, summary, option validation, build."""

    kind: ClassVar[str] = ""
    components: ClassVar[list[str] | None] = None

    def test_has_summary(self, entry):
        assert entry.summary.strip(), f"{who(entry)} has no one-line summary"

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

    def test_no_option_shadows_a_core_key(self, entry):
        clash = sorted(core_keys(entry.kind) & {f.name for f in attrs.fields(entry.config_cls)})
        assert not clash, (f"{who(entry)}: option(s) {', '.join(clash)} have the name of a "
                           f"core key of the {entry.kind} section (the core reads them, the "
                           f"plugin would never see them); rename them")

    def test_wrong_type_option_is_an_error_naming_the_field(self, entry, contract_ctx):
        hints = typing.get_type_hints(entry.config_cls)
        base = C.options_for(entry, contract_ctx)
        for f in attrs.fields(entry.config_cls):
            tp = hints.get(f.name, Any)
            bad = _wrong_value(tp)
            assert bad is not _NONE, (f"{who(entry)}: option '{f.name}' accepts a value of "
                                      f"any type ({tp}); annotate its type so recipes are "
                                      f"checked")
            with pytest.raises(RecipeError) as exc:
                structure(entry.config_cls, {**base, f.name: bad}, file="recipe.toml",
                          key=entry.kind)
            assert f"{entry.kind}.{f.name}" in str(exc.value), \
                f"{who(entry)}: the error for a bad '{f.name}' does not name it: {exc.value}"

    def test_out_of_range_numbers_fail_at_the_option(self, entry, contract_ctx):
        """A negative or zero number either works or is refused naming the option; it must
        not pass the config and fail later inside the component."""
        hints = typing.get_type_hints(entry.config_cls)
        base = C.options_for(entry, contract_ctx)
        for f in attrs.fields(entry.config_cls):
            for value in _edge_values(hints.get(f.name, Any)):
                try:
                    cfg = structure(entry.config_cls, {**base, f.name: value},
                                    file="recipe.toml", key=entry.kind)
                except RecipeError as exc:
                    assert f.name in str(exc), \
                        f"{who(entry)}: the error for {f.name} = {value} does not name it: {exc}"
                    continue
                try:
                    obj = self.make_from_config(entry, contract_ctx, cfg)
                    self.exercise(entry, obj, contract_ctx)
                except ClapkitError as exc:
                    assert f.name in str(exc), (f"{who(entry)}: the error for {f.name} = "
                                                f"{value} does not name the option: {exc}")
                except Exception as exc:  # noqa: BLE001 - that is the finding
                    if _raised_by_the_suite(exc):
                        raise
                    pytest.fail(f"{who(entry)}: option {f.name} = {value!r} passes the config "
                                f"but fails inside the component with {type(exc).__name__}: "
                                f"{exc}; refuse it in the config (an attrs validator)")

    def test_builds(self, entry, contract_ctx):
        assert self.make(entry, contract_ctx) is not None

    # helpers ---------------------------------------------------------------------------------
    def make(self, entry, ctx, **changes) -> Any:
        return C.build(entry, ctx, **changes)

    def make_from_config(self, entry, ctx, cfg) -> Any:
        local = attrs.evolve(ctx, section=f"{entry.kind}.{entry.name}")
        return entry.factory(cfg, local)

    def exercise(self, entry, obj: Any, ctx) -> None:
        """Use a freshly built component once (after an option change)."""


class _NoneType:
    pass


_NONE = _NoneType()


def _wrong_value(tp: Any) -> Any:
    for v in _WRONG_VALUES:
        try:
            convert(tp, v, file=None, key="x")
        except RecipeError:
            return v
    return _NONE


def _numeric(tp: Any) -> type | None:
    if tp in (int, float):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float):
            return args[0]
    return None


def _edge_values(tp: Any) -> tuple[Any, ...]:
    num = _numeric(tp)
    if num is int:
        return (-1, 0)
    if num is float:
        return (-1.0,)
    return ()


class ModuleContract(Contract):
    """Checks for components that are ``nn.Module``s: state, gradients, determinism, dtypes
    and (for :class:`Component` kinds) the task lifecycle."""

    base: ClassVar[type] = nn.Module

    # -- what a suite defines ------------------------------------------------------------------
    def inputs(self, m: nn.Module, ctx, g: torch.Generator) -> tuple:
        raise NotImplementedError

    def call(self, m: nn.Module, args: tuple, step: StepContext) -> Any:
        raise NotImplementedError

    def tensors(self, out: Any) -> list[torch.Tensor]:
        """Float tensors of an output (compared across runs, back-propagated)."""
        return _float_tensors(out)

    def check_output(self, entry, m: nn.Module, out: Any, ctx, step: StepContext) -> None:
        """The kind's output rules (shapes, types)."""

    # -- running ---------------------------------------------------------------------------------
    def make(self, entry, ctx, grow: bool = True, **changes) -> Any:
        m = C.build(entry, ctx, **changes)
        return C.grow(m) if grow and isinstance(m, Component) else m

    def exercise(self, entry, obj: Any, ctx) -> None:
        if isinstance(obj, Component):
            C.grow(obj)
        self.run(obj.eval(), ctx)

    def run(self, m: nn.Module, ctx, step: StepContext | None = None,
            dtype: torch.dtype | None = None, seed: int = 0) -> Any:
        g = torch.Generator().manual_seed(seed)
        args = _to(self.inputs(m, ctx, g), ctx.device, dtype)
        if step is None:
            step = C.step_for(ctx, training=m.training)
        torch.manual_seed(1234 + seed)      # a module's own randomness: torch's generator
        return self.call(m, args, step)

    # -- checks ----------------------------------------------------------------------------------
    def test_is_module_of_its_kind(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        assert isinstance(m, self.base), \
            f"{who(entry)} is a {type(m).__name__}, expected a subclass of {self.base.__name__}"

    def test_output_follows_the_contract(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        step = C.step_for(contract_ctx)
        self.check_output(entry, m, self.run(m, contract_ctx, step), contract_ctx, step)

    def test_state_dict_survives_save_and_load(self, entry, contract_ctx):
        torch.manual_seed(1)
        a = self.make(entry, contract_ctx).train()
        self.run(a, contract_ctx)                    # buffers a forward updates (queues, stats)
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        torch.manual_seed(2)
        b = self.make(entry, contract_ctx)
        _assert_same_keys(entry, a, b)
        buf.seek(0)
        b.load_state_dict(torch.load(buf, weights_only=True), strict=True)
        a.eval(), b.eval()
        _assert_same(entry, "outputs after a state_dict save/load", self.tensors(
            self.run(a, contract_ctx)), self.tensors(self.run(b, contract_ctx)))

    def test_deterministic_under_seed(self, entry, contract_ctx):
        outs = []
        for _ in range(2):
            torch.manual_seed(3)
            m = self.make(entry, contract_ctx).eval()
            torch.manual_seed(4)
            outs.append(self.tensors(self.run(m, contract_ctx)))
        _assert_same(entry, "eval outputs of two builds under one seed", *outs)

    def test_deterministic_under_seed_in_train_mode(self, entry, contract_ctx):
        outs = []
        for _ in range(2):
            torch.manual_seed(3)
            m = self.make(entry, contract_ctx).train()
            torch.manual_seed(4)
            outs.append(self.tensors(self.run(m, contract_ctx)))
        _assert_same(entry, "train-mode outputs of two runs under one seed (draw randomness "
                     "from torch's generator, not Python's or numpy's)", *outs)

    def test_gradients_reach_only_trainable_parameters(self, entry, contract_ctx):
        torch.manual_seed(0)
        m = self.make(entry, contract_ctx).train()
        outs = [t for t in self.tensors(self.run(m, contract_ctx)) if t.requires_grad]
        if not outs:
            trainable = [n for n, p in m.named_parameters() if p.requires_grad]
            assert not trainable, (f"{who(entry)}: trainable parameters {trainable[:5]} exist "
                                   f"but no output depends on them")
            return
        sum(t.float().pow(2).mean() for t in outs).backward()
        for name, p in m.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, f"{who(entry)}: frozen parameter {name} got a gradient"

    def test_trainable_parameters_receive_gradients(self, entry, contract_ctx):
        torch.manual_seed(0)
        m = self.make(entry, contract_ctx).train()
        outs = [t for t in self.tensors(self.run(m, contract_ctx)) if t.requires_grad]
        trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        if not trainable:
            return
        assert outs, f"{who(entry)}: no output depends on the trainable parameters"
        sum(t.float().pow(2).mean() for t in outs).backward()
        dead = [n for n, p in trainable if p.grad is None]
        assert not dead, (f"{who(entry)}: trainable parameter(s) {', '.join(dead[:8])} receive "
                          f"no gradient from the outputs (freeze them or use them)")
        bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
        assert not bad, f"{who(entry)}: non-finite gradient in {', '.join(bad[:8])}"

    def test_bfloat16(self, entry, contract_ctx):
        ctx = _own_backbone(contract_ctx)          # the move may reach a held backbone
        m = self.make(entry, ctx).eval().to(torch.bfloat16)
        ctx.backbone.to(torch.bfloat16)
        for name, p in m.named_parameters():
            assert p.dtype == torch.bfloat16, f"{who(entry)}: {name} did not move to bfloat16"
        outs = _guarded(entry, "a forward in bfloat16",
                        lambda: self.tensors(self.run(m, ctx, dtype=torch.bfloat16)))
        for t in outs:
            assert torch.isfinite(t.float()).all(), \
                f"{who(entry)}: non-finite output in bfloat16"

    def test_forward_under_autocast(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = _guarded(entry, "a forward under autocast (bfloat16)",
                            lambda: self.tensors(self.run(m, contract_ctx)))
        for t in outs:
            assert torch.isfinite(t.float()).all(), \
                f"{who(entry)}: non-finite output under autocast"

    def test_task_lifecycle_grows_and_resumes(self, entry, contract_ctx):
        """on_task_start(0..1) with forwards and on_task_end between; a fresh instance that
        replays only on_task_start (what a resume does) loads the state strictly."""
        torch.manual_seed(1)
        a = self.make(entry, contract_ctx, grow=False)
        if not isinstance(a, Component):
            return
        for task, seen in C.GROWTH:
            a.on_task_start(task, seen)
            for training in (True, False):
                a.train(training)
                step = C.step_for(contract_ctx, task=task, training=training)
                out = self.run(a, contract_ctx, step)
                self.check_output(entry, a, out, contract_ctx, step)
            a.on_task_end(task, C.task_view(contract_ctx, task))
        torch.manual_seed(2)
        b = self.make(entry, contract_ctx)              # replays on_task_start(0), (1)
        _assert_same_keys(entry, a, b, "after growing through two tasks")
        try:
            b.load_state_dict(a.state_dict(), strict=True)
        except RuntimeError as exc:
            pytest.fail(f"{who(entry)}: a resumed instance (on_task_start replayed) cannot load "
                        f"the grown state strictly: {exc}")
        a.eval(), b.eval()
        _assert_same(entry, "outputs of the grown and the resumed instance",
                     self.tensors(self.run(a, contract_ctx)),
                     self.tensors(self.run(b, contract_ctx)))

    @pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    def test_device_move(self, entry, contract_ctx, device):
        ctx = _own_backbone(contract_ctx)
        m = self.make(entry, ctx).eval().to(device)
        ctx = attrs.evolve(ctx, device=torch.device(device))
        ctx.backbone.to(device)
        for t in self.tensors(self.run(m, ctx)):
            assert t.device.type == device, f"{who(entry)}: output on {t.device}"


# --- helpers -----------------------------------------------------------------------------------

def _raised_by_the_suite(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is in clapkit.testing (a suite bug, not a
    finding about the component)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.dirname(os.path.abspath(
        tb.tb_frame.f_code.co_filename)) == os.path.dirname(os.path.abspath(__file__))


def _guarded(entry, what: str, fn: Any) -> Any:
    """``fn()``; an exception becomes a failure that names the component."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported as the finding
        pytest.fail(f"{who(entry)}: {what} failed: {type(exc).__name__}: {exc}")


def _own_backbone(ctx):
    """A context with a private copy of the backbone (for tests that move modules)."""
    if ctx.backbone is None:
        return ctx
    return attrs.evolve(ctx, backbone=copy.deepcopy(ctx.backbone))


def _to(obj: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if torch.is_tensor(obj):
        out = obj.to(device)
        if dtype is not None and out.is_floating_point():
            out = out.detach().to(dtype).requires_grad_(obj.requires_grad)
        return out
    if isinstance(obj, tuple):
        return tuple(_to(o, device, dtype) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, torch.distributions.Normal):
        return torch.distributions.Normal(_to(obj.loc, device, dtype), _to(obj.scale, device,
                                                                           dtype))
    if attrs.has(type(obj)):
        return attrs.evolve(obj, **{f.name: _to(getattr(obj, f.name), device, dtype)
                                    for f in attrs.fields(type(obj)) if f.init})
    return obj


def _float_tensors(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _float_tensors(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _float_tensors(out[k])]
    return []


def _assert_same_keys(entry, a: nn.Module, b: nn.Module, when: str = "") -> None:
    ka, kb = set(a.state_dict()), set(b.state_dict())
    assert ka == kb, (f"{who(entry)}: state_dict keys differ between two instances "
                      f"{when} (only in the first: {sorted(ka - kb)[:6]}; only in the second: "
                      f"{sorted(kb - ka)[:6]}); create state in __init__/on_task_start, "
                      f"as parameters or buffers")


def _assert_same(entry, what: str, *outs: list[torch.Tensor]) -> None:
    first = outs[0]
    for other in outs[1:]:
        assert len(first) == len(other), f"{who(entry)}: {what}: different number of outputs"
        for x, y in zip(first, other):
            assert x.shape == y.shape, f"{who(entry)}: {what}: shapes {tuple(x.shape)} and " \
                                       f"{tuple(y.shape)}"
            xf, yf = x.detach().float(), y.detach().float()
            if not torch.allclose(xf, yf, rtol=0, atol=1e-6, equal_nan=True):
                worst = float((xf - yf).abs().nan_to_num(float("inf")).max())
                raise AssertionError(f"{who(entry)}: {what} differ (max abs difference "
                                     f"{worst:.3g})")
