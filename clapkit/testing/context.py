"""Cheap build contexts and example inputs for the contract suites.

The suites need a backbone for text-side components. They take one from the registry (the
``--clapkit-backbone`` pytest option, else the first registered backbone that declares
``test_options``), so the core never names a concrete plugin.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import structure
from ..errors import ClapkitError
from ..interfaces import BuildContext
from ..plugins import PluginHost
from ..registry import ComponentEntry

CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse"]
TASK_OF_CLASS = [0, 0, 1, 1, 1]
STREAMS = ("face", "context")


def options_for(entry: ComponentEntry, ctx: BuildContext) -> dict[str, Any]:
    """The recipe options a suite builds ``entry`` with (its test_options, else defaults)."""
    return dict(entry.test_options(ctx)) if entry.test_options else {}


def config_for(entry: ComponentEntry, ctx: BuildContext) -> Any:
    return structure(entry.config_cls, options_for(entry, ctx),
                     file=f"<test_options of {entry.kind} '{entry.name}'>", key=entry.kind)


def build(entry: ComponentEntry, ctx: BuildContext, **changes: Any) -> Any:
    """Build ``entry`` from its test options in (a copy of) ``ctx``."""
    import attrs
    local = attrs.evolve(ctx, section=f"{entry.kind}.{entry.name}", **changes)
    return entry.factory(config_for(entry, local), local)


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
    return ctx


def example_outputs(ctx: BuildContext, batch: int = 6, samples: int = 3,
                    views: tuple[str, ...] = (), requires_grad: bool = True
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step outputs and a batch with every key a loss may read, filled with random data."""
    g = torch.Generator().manual_seed(1)
    c, d, t = ctx.num_classes, ctx.embed_dim, ctx.num_frames

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    names = set(views) | {"text"}
    view_t = {n: r(c, d) for n in names}
    outputs = {"logits": r(batch, c), "sample_logits": r(samples, batch, c), "z": r(batch, d),
               "views": view_t, "text": view_t["text"],
               "features": {s: r(batch, t, d) for s in ctx.streams},
               "stream_z": {s: r(batch, d) for s in ctx.streams}, "aux": {},
               "distributions": {}}
    labels = torch.arange(batch) % c
    return outputs, {"label": labels, "epoch": 0, "stage": "test",
                     "index": torch.arange(batch)}
