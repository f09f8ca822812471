"""`tensorboard` logger: scalars to ``<out_dir>/<subdir>`` with ``SummaryWriter``.

Needs the optional ``tensorboard`` package; the factory checks for it at build time so a
recipe that asks for this logger fails before training starts, with the install command.
The x axis of epoch scalars is the epoch index over the whole run (``run.global_epoch`` when
the run state has it, so a resumed run continues its curves), so curves of consecutive stages
and tasks line up; task metrics use the task index.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from clapkit import hookimpl
from clapkit.validators import inside
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext


@attrs.frozen
class TensorboardConfig:
    """``subdir``: event-file folder inside the run folder."""

    subdir: str = attrs.field(default="tensorboard", validator=inside)  # never outside the run


def _summary_writer_cls() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ClapkitError(
            "logger 'tensorboard' needs the tensorboard package, which is not installed: "
            "pip install 'clapkit[tensorboard]'") from exc
    return SummaryWriter


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


class TensorboardLogger:
    """Scalar curves for TensorBoard (rank 0 only)."""

    def __init__(self, cfg: TensorboardConfig, writer_cls: type) -> None:
        self.cfg = cfg
        self._writer_cls = writer_cls
        self._writer: Any = None
        self._step = 0

    def _get(self, run: Any) -> Any:
        if getattr(run, "rank", 0) != 0:
            return None
        if self._writer is None:
            self._writer = self._writer_cls(log_dir=str(Path(run.out_dir) / self.cfg.subdir))
        return self._writer

    @hookimpl
    def clapkit_run_start(self, run: Any) -> None:
        self._get(run)

    @hookimpl
    def clapkit_epoch_end(self, run: Any, task: int, stage: str, epoch: int,
                          metrics: dict[str, Any]) -> None:
        w = self._get(run)
        if w is None:
            return
        # the engine's epoch counter survives a resume; an own counter is the fallback
        step = int(getattr(run, "global_epoch", self._step))
        for k, v in _scalars(metrics).items():
            w.add_scalar(k, v, step)
        w.add_scalar("progress/task", task, step)
        self._step = step + 1
        w.flush()

    @hookimpl
    def clapkit_task_end(self, run: Any, task: int, metrics: dict[str, Any]) -> None:
        w = self._get(run)
        if w is None:
            return
        for k, v in _scalars(metrics).items():
            w.add_scalar(f"task/{k}", v, task)
        w.flush()

    @hookimpl
    def clapkit_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        w = self._get(run)
        if w is None:
            return
        scalars = _scalars(summary)
        for k, v in scalars.items():
            w.add_scalar(f"summary/{k}", v, 0)
        if scalars:
            w.add_text("summary", "\n".join(f"    {k}: {v:.4f}" for k, v in scalars.items()), 0)
        w.close()
        self._writer = None


def build(cfg: TensorboardConfig, ctx: BuildContext) -> TensorboardLogger:
    """Scalars (losses, WAR/UAR, learning rates, task accuracies) to TensorBoard event files."""
    return TensorboardLogger(cfg, _summary_writer_cls())


@hookimpl
def clapkit_register(registrar):
    registrar.add("logger", "tensorboard", build, config=TensorboardConfig)
