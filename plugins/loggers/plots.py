"""`plots` logger: PNG figures in ``<out_dir>/plots`` (matplotlib, Agg canvas, atomic writes).

* every ``every`` epochs: the validation confusion matrix as
  ``confusion_t{task}_{stage}_e{epoch}.png`` (with ``per_epoch = true``) and
  ``confusion_latest.png``;
* at stage, task and run end: ``learning_curves.png`` (train/valid WAR and UAR per epoch);
* at task and run end: ``accuracy_matrix.png``, the heatmap of R[t][j] built from the
  ``acc_task/<j>`` entries of each task's metrics.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs

from clapkit import hookimpl
from clapkit.interfaces import BuildContext
from clapkit.plotting import plot_accuracy_matrix, plot_confusion, plot_learning_curves


@attrs.frozen
class PlotsConfig:
    """``every``: draw the confusion matrix every N epochs; ``per_epoch``: keep one file per
    epoch besides ``confusion_latest.png``; ``dpi``: resolution; ``subdir``: folder name."""

    every: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    per_epoch: bool = True
    dpi: int = attrs.field(default=100, validator=[attrs.validators.ge(30),
                                                   attrs.validators.le(600)])
    subdir: str = attrs.field(default="plots", validator=attrs.validators.min_len(1))


def _safe(name: str) -> str:
    """Stage names into file names: anything but letters, digits, '-' and '_' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)) or "stage"


class PlotsLogger:
    """Figures of a run (rank 0 only)."""

    def __init__(self, cfg: PlotsConfig) -> None:
        self.cfg = cfg
        self.history: list[dict[str, Any]] = []
        self.acc_rows: dict[int, list[float]] = {}

    def _dir(self, run: Any) -> Path | None:
        if getattr(run, "rank", 0) != 0:
            return None
        return Path(run.out_dir) / self.cfg.subdir

    def _curves(self, run: Any) -> None:
        out = self._dir(run)
        if out is not None and self.history:
            plot_learning_curves(self.history, out / "learning_curves.png", dpi=self.cfg.dpi)

    def _accuracy_matrix(self, run: Any) -> None:
        out = self._dir(run)
        if out is None or not self.acc_rows:
            return
        rows = [self.acc_rows.get(t, []) for t in range(max(self.acc_rows) + 1)]
        plot_accuracy_matrix(rows, out / "accuracy_matrix.png", dpi=self.cfg.dpi)

    @hookimpl
    def clapkit_epoch_end(self, run: Any, task: int, stage: str, epoch: int,
                          metrics: dict[str, Any]) -> None:
        out = self._dir(run)
        if out is None:
            return
        self.history.append({"task": task, "stage": stage, "epoch": epoch,
                             **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        conf = metrics.get("valid/confusion")
        if not conf or (epoch + 1) % self.cfg.every:
            return
        names = getattr(run, "class_names", None)
        title = f"valid confusion, task {task}, stage {stage}, epoch {epoch + 1}"
        latest = plot_confusion(conf, names, out / "confusion_latest.png", title=title,
                                dpi=self.cfg.dpi)
        if self.cfg.per_epoch:
            # same bytes as the latest figure: copy instead of drawing it twice
            target = out / f"confusion_t{task}_{_safe(stage)}_e{epoch}.png"
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(latest.read_bytes())
            tmp.replace(target)

    @hookimpl
    def clapkit_stage_end(self, run: Any, task: int, stage: str) -> None:
        self._curves(run)

    @hookimpl
    def clapkit_task_end(self, run: Any, task: int, metrics: dict[str, Any]) -> None:
        if self._dir(run) is None:
            return
        per_task = sorted((int(k.split("/", 1)[1]), float(v)) for k, v in metrics.items()
                          if k.startswith("acc_task/"))
        if per_task:
            self.acc_rows[task] = [v for _, v in per_task]
        self._accuracy_matrix(run)
        self._curves(run)

    @hookimpl
    def clapkit_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        self._accuracy_matrix(run)
        self._curves(run)


def build(cfg: PlotsConfig, ctx: BuildContext) -> PlotsLogger:
    """PNG confusion matrices per epoch, accuracy-matrix heatmap and learning curves."""
    return PlotsLogger(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("logger", "plots", build, config=PlotsConfig)
