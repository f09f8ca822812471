"""`backbone_export` logger: the trained backbone's own weights into the run folder.

At the end of a run (``clapkit_run_end``) the backbone's underlying model state dict -- for
the ``open_clip`` backbone the open_clip model, exactly what ``open_clip.create_model(...,
pretrained=FILE)`` loads -- is written (atomically, weights only: tensors on CPU, no Python
objects) to ``RUN_DIR/<file>`` (default ``backbone.pt``). Any recipe of the same model then
starts from it with ``backbone.pretrained = "RUN_DIR/backbone.pt"``; the backbone
fingerprints it by its content like any other checkpoint file.

The weights are those of the pipeline at the end of the run: the last epoch's, or the
selected model's when the engine reloaded it for the final evaluation. The core has no
"export the backbone" option, so a recipe enables this with a ``[log.export]`` table.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import attrs
import torch

from clapkit import hookimpl
from clapkit import validators as v
from clapkit.interfaces import BuildContext

log = logging.getLogger("clapkit.backbone_export")


@attrs.frozen
class BackboneExportConfig:
    """``file``: the name of the weights file inside the run folder."""

    file: str = attrs.field(default="backbone.pt", validator=v.name)


def backbone_weights(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a loader of the backbone's model reads: the wrapped model's (open_clip:
    ``backbone.model``), else the backbone's own; detached CPU copies."""
    inner = getattr(backbone, "model", None)
    module = inner if isinstance(inner, torch.nn.Module) else backbone
    return {k: t.detach().cpu().clone() for k, t in module.state_dict().items()}


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class BackboneExport:
    """Writes ``RUN_DIR/<file>`` at the end of the run (rank 0 only)."""

    def __init__(self, cfg: BackboneExportConfig) -> None:
        self.cfg = cfg
        self.written: Path | None = None

    @hookimpl
    def clapkit_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        if getattr(run, "rank", 0) != 0 or getattr(run, "out_dir", None) is None:
            return
        backbone = getattr(getattr(run, "model", None), "backbone", None)
        if not isinstance(backbone, torch.nn.Module):
            log.warning("backbone_export: the run has no backbone to export")
            return
        path = Path(run.out_dir) / self.cfg.file
        save_weights(backbone_weights(backbone), path)
        self.written = path
        print(f"backbone weights: {path} (load with backbone.pretrained = \"{path}\")")


def build(cfg: BackboneExportConfig, ctx: BuildContext) -> BackboneExport:
    """The trained backbone's weights to RUN_DIR/backbone.pt at the end of the run."""
    return BackboneExport(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("logger", "backbone_export", build, config=BackboneExportConfig)
