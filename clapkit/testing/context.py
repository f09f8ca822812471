"""Cheap build contexts and example inputs for the contract suites.

The suites need a backbone for text-side components. They take one from the registry (the
``--clapkit-backbone`` pytest option, else the first registered backbone that declares
``test_options``), so the core never names a concrete plugin.

Inputs are built exactly as the engine builds them: a :class:`StepContext` per forward, the
task lifecycle (``on_task_start(0, 2)``, ``on_task_start(1, 5)``) before the first forward,
:class:`SelectionInputs` restricted to the seen classes, loss outputs under the names a
pipeline declares.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import attrs
import torch

from ..config import structure
from ..errors import ClapkitError
from ..interfaces import BuildContext, SelectionInputs, StepContext, TaskView
from ..plugins import PluginHost
from ..registry import ComponentEntry

CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse"]
TASK_OF_CLASS = [0, 0, 1, 1, 1]
STREAMS = ("face", "context")
#: (task, seen classes) of the two tasks the suites grow components through
GROWTH = ((0, 2), (1, 5))
B, S = 4, 3


def options_for(entry: ComponentEntry, ctx: BuildContext) -> dict[str, Any]:
    """The recipe options a suite builds ``entry`` with (its test_options, else defaults)."""
    return dict(entry.test_options(ctx)) if entry.test_options else {}


def config_for(entry: ComponentEntry, ctx: BuildContext, **changes: Any) -> Any:
    return structure(entry.config_cls, {**options_for(entry, ctx), **changes},
                     file=f"<test_options of {entry.kind} '{entry.name}'>", key=entry.kind)


def build(entry: ComponentEntry, ctx: BuildContext, options: dict[str, Any] | None = None,
          **changes: Any) -> Any:
    """Build ``entry`` from its test options (updated by ``options``) in a copy of ``ctx``."""
    local = attrs.evolve(ctx, section=f"{entry.kind}.{entry.name}", **changes)
    return entry.factory(config_for(entry, local, **(options or {})), local)


def pick_backbone_entry(host: PluginHost, name: str | None = None) -> ComponentEntry:
    reg = host.registries["backbone"]
    if name:
        return reg.get(name)
    for entry in reg:
        if entry.test_options is not None:
            return entry
    raise ClapkitError("the contract suites need a backbone with test_options; none is "
                       f"registered (backbones: {', '.join(reg.names()) or 'none'})")


def make_context(host: PluginHost, backbone_name: str | None = None,
                 work_dir: Path | None = None) -> BuildContext:
    """A context with a small backbone, five classes in two tasks and two streams."""
    work = work_dir or Path(tempfile.mkdtemp(prefix="clapkit-contract-"))
    ctx = BuildContext(host=host, recipe_file="<contract>", class_names=list(CLASS_NAMES),
                       class_counts=[10, 20, 5, 8, 12], task_of_class=list(TASK_OF_CLASS),
                       streams=STREAMS, stream=STREAMS[0], num_frames=4, work_dir=work)
    torch.manual_seed(0)
    ctx.backbone = build(pick_backbone_entry(host, backbone_name), ctx).eval()
    for p in ctx.backbone.parameters():
        p.requires_grad_(False)
    return ctx


def grow(module: Any, upto_task: int = len(GROWTH) - 1) -> Any:
    """Replay the task lifecycle a run (or a resume) performs up to ``upto_task``."""
    for task, seen in GROWTH[:upto_task + 1]:
        module.on_task_start(task, seen)
    return module


def step_for(ctx: BuildContext, task: int = len(GROWTH) - 1, training: bool = False,
             batch: int = B, samples: int = S, device: torch.device | None = None
             ) -> StepContext:
    """The step the engine passes in ``task``; training steps carry labels of seen classes."""
    dev = device or ctx.device
    seen = GROWTH[task][1]
    toc = torch.tensor(ctx.task_of_class, device=dev)
    label = present = None
    if training:
        label = torch.arange(batch, device=dev) % seen
        present = torch.unique(toc[label])
    return StepContext(task=task, seen_classes=seen, num_samples=samples, training=training,
                       task_of_class=toc, tasks_present=present, label=label)


def task_view(ctx: BuildContext, task: int, n: int = 8) -> TaskView:
    """What ``on_task_end(task, view)`` receives: that task's items, encoded."""
    g = torch.Generator().manual_seed(10 + task)
    classes = [c for c, t in enumerate(ctx.task_of_class) if t == task]
    labels = torch.tensor(classes)[torch.arange(n) % len(classes)]
    d = ctx.embed_dim
    return TaskView(task=task, classes=classes, labels=labels, z=torch.randn(n, d, generator=g),
                    image={s: torch.randn(n, d, generator=g) for s in ctx.streams},
                    index=torch.arange(n))


def example_outputs(ctx: BuildContext, needs: tuple[str, ...] = (), batch: int = B,
                    samples: int = S, requires_grad: bool = True
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step outputs and a batch under the names a pipeline publishes, random data.

    Every name in ``needs`` is present: ``views.<n>`` ``[C,D]``, ``aux.<section>.<key>``
    ``[C,D]`` and ``distributions.<n>`` a Normal over ``[C,D]`` (a loss whose aux tensors
    have other shapes supplies them through ``meta example_outputs``).
    """
    g = torch.Generator().manual_seed(1)
    c, d, t = ctx.num_classes, ctx.embed_dim, ctx.num_frames

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    views = {"text": r(c, d)}
    aux: dict[str, torch.Tensor] = {}
    dists: dict[str, torch.distributions.Distribution] = {}
    for need in needs:
        kind, _, rest = need.partition(".")
        if kind == "views" and rest:
            views.setdefault(rest, r(c, d))
        elif kind == "aux" and rest:
            aux.setdefault(rest, r(c, d))
        elif kind == "distributions" and rest:
            loc, scale = r(c, d), r(c, d)
            dists[rest] = torch.distributions.Normal(loc, torch.nn.functional.softplus(scale)
                                                     + 1e-3)
    features = {s: r(batch, t, d) for s in ctx.streams}
    outputs = {"logits": r(batch, c), "sample_logits": r(samples, batch, c),
               "sample_mask": None, "z": r(batch, d), "views": views, "text": views["text"],
               "features": features, "raw": {s: f.mean(1) for s, f in features.items()},
               "stream_z": {s: r(batch, d) for s in ctx.streams}, "aux": aux,
               "distributions": dists, "step": step_for(ctx, training=True, batch=batch,
                                                        samples=samples)}
    labels = outputs["step"].label
    return outputs, {"label": labels, "epoch": 0, "stage": "test", "index": torch.arange(batch),
                     "step": outputs["step"]}


def selection_inputs(ctx: BuildContext, per_class: tuple[int, ...] = (10, 3, 7),
                     samples: int | None = S, ragged: bool = True,
                     index_offset: int = 1000) -> SelectionInputs:
    """Candidates as the engine's memory update passes them (``engine/memory.py``): logits of
    the seen classes only ``[N,C_seen]``, per-item samples ``[S,N,C_seen]`` with a ragged
    ``sample_mask`` ``[S,N,C_seen]`` (the last class got one sample fewer), and train-split
    indices that are *not* positions (a selector must return positions)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor(per_class))
    n, c = len(labels), len(per_class)
    sample_logits = mask = None
    if samples:
        sample_logits = torch.randn(samples, n, c, generator=g)
        if ragged:
            mask = torch.ones(samples, n, c, dtype=torch.bool)
            mask[samples - 1, :, c - 1] = False
    return SelectionInputs(features=torch.randn(n, ctx.embed_dim, generator=g), labels=labels,
                           logits=torch.randn(n, c, generator=g), sample_logits=sample_logits,
                           sample_mask=mask, index=torch.arange(n) + index_offset)
