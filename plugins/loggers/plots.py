"""`plots` logger: PNG figures in ``<out_dir>/plots`` (matplotlib, Agg canvas, atomic writes).

* at each new best valid UAR: ``confusion_best.png`` (the model ``best.pt`` holds; per task
  ``confusion_best_t{task}.png`` in incremental runs), at each task end
  ``confusion_final.png`` (``confusion_final_t{task}.png``), and at run end (single-task
  runs) ``confusion_final.png`` again from ``summary.json``'s ``final/valid_confusion``, i.e.
  the model the final figures come from (``best.pt`` when the run selected one);
  with ``per_epoch = true`` also
  ``confusion_t{task}_{stage}_e{epoch}.png`` every ``every`` epochs;
* at stage, task and run end: ``learning_curves.png``: a title, train/valid WAR and UAR per
  epoch above the loss curve (total and terms), stage boundaries and names; after a resume
  the whole history, read back from ``metrics.jsonl`` (or the logger's own
  ``<subdir>/history.jsonl`` when the jsonl logger is off);
* incremental runs only (more than one task), at task and run end: ``accuracy_matrix.png``,
  the heatmap of R[t][j] built from the ``acc_task/<j>`` entries of each task's metrics
  (``accuracy_matrix.json`` is the engine's, written whatever loggers are on).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import attrs

from clapkit import hookimpl
from clapkit.atomic import json_safe
from clapkit.validators import inside
from clapkit.interfaces import BuildContext
from clapkit.plotting import plot_accuracy_matrix, plot_confusion, plot_learning_curves
from clapkit.report import seen_confusion


@attrs.frozen
class PlotsConfig:
    """``per_epoch``: also one confusion figure every ``every`` epochs (besides the best and
    final ones); ``dpi``: resolution; ``subdir``: folder name."""

    every: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    per_epoch: bool = False
    dpi: int = attrs.field(default=100, validator=[attrs.validators.ge(30),
                                                   attrs.validators.le(600)])
    subdir: str = attrs.field(default="plots", validator=inside)   # never outside the run


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _safe(name: str) -> str:
    """Stage names into file names: anything but letters, digits, '-' and '_' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)) or "stage"


class PlotsLogger:
    """Figures of a run (rank 0 only)."""

    def __init__(self, cfg: PlotsConfig) -> None:
        self.cfg = cfg
        self.history: list[dict[str, Any]] = []
        self.best_uar: dict[int, float] = {}
        self.acc_rows: dict[int, list[float]] = {}

    def _dir(self, run: Any) -> Path | None:
        if getattr(run, "rank", 0) != 0:
            return None
        return Path(run.out_dir) / self.cfg.subdir

    def _curves(self, run: Any) -> None:
        out = self._dir(run)
        if out is not None and self.history:
            name = getattr(getattr(getattr(run, "recipe", None), "run", None), "name", "run")
            plot_learning_curves(self.history, out / "learning_curves.png", dpi=self.cfg.dpi,
                                 title=f"{name}: train/valid WAR and UAR, loss per epoch")

    @staticmethod
    def _incremental(run: Any) -> bool:
        return int(getattr(run, "num_tasks", 1) or 1) > 1

    @staticmethod
    def _jsonl_file(run: Any) -> Path:
        """The jsonl logger's file in this run (its ``file`` option when configured)."""
        log = getattr(getattr(run, "recipe", None), "log", None) or {}
        for spec in getattr(log, "values", lambda: [])():
            if getattr(spec, "plugin", None) == "jsonl":
                return Path(run.out_dir) / getattr(spec.config, "file", "metrics.jsonl")
        return Path(run.out_dir) / "metrics.jsonl"

    def _add(self, row: dict[str, Any]) -> None:
        """Append an epoch, replacing an earlier record of the same epoch (a resume may
        repeat the epoch whose checkpoint was not written)."""
        key = (row.get("task"), row.get("stage"), row.get("epoch"))
        self.history = [h for h in self.history
                        if (h.get("task"), h.get("stage"), h.get("epoch")) != key]
        self.history.append(row)

    @staticmethod
    def _row(task: Any, stage: Any, epoch: Any, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"task": task, "stage": stage, "epoch": epoch,
                **{k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}}

    def _load_history(self, run: Any) -> None:
        """Epochs an earlier (interrupted) process of this run logged: from the jsonl log,
        else from this logger's own history file."""
        out = self._dir(run)
        if out is None:
            return
        for path in (self._jsonl_file(run), out / "history.jsonl"):
            if not path.is_file():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event", "epoch_end") == "epoch_end":
                    self._add(self._row(rec.get("task"), rec.get("stage"), rec.get("epoch"),
                                        rec.get("metrics") or {}))
            return

    def _accuracy_matrix(self, run: Any) -> None:
        out = self._dir(run)
        if out is None or not self.acc_rows or not self._incremental(run):
            return
        rows = [self.acc_rows.get(t, []) for t in range(max(self.acc_rows) + 1)]
        plot_accuracy_matrix(rows, out / "accuracy_matrix.png", dpi=self.cfg.dpi)

    @hookimpl
    def clapkit_run_start(self, run: Any) -> None:
        self._load_history(run)

    def _names(self, run: Any, n: int) -> list[str] | None:
        names = list(getattr(run, "class_names", None) or [])
        return names[:n] if len(names) >= n else None

    def _where(self, run: Any, task: int) -> str:
        return f"task {task}, " if self._incremental(run) else ""

    @hookimpl
    def clapkit_epoch_end(self, run: Any, task: int, stage: str, epoch: int,
                          metrics: dict[str, Any]) -> None:
        out = self._dir(run)
        if out is None:
            return
        row = self._row(task, stage, epoch, metrics)
        self._add(row)
        if not self._jsonl_file(run).is_file():
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "history.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(json_safe(row)) + "\n")
        conf = metrics.get("valid/confusion")
        if not conf:
            return
        conf = seen_confusion(conf, run, task)
        names = self._names(run, len(conf))
        uar = _float(metrics.get("valid/uar"))
        if not math.isnan(uar) and uar > self.best_uar.get(task, -math.inf):
            self.best_uar[task] = uar
            suffix = f"_t{task}" if self._incremental(run) else ""
            plot_confusion(conf, names, out / f"confusion_best{suffix}.png",
                           title=f"valid confusion at the best valid UAR ({100 * uar:.1f}%): "
                                 f"{self._where(run, task)}stage {stage}, epoch {epoch + 1}",
                           dpi=self.cfg.dpi)
        if self.cfg.per_epoch and (epoch + 1) % self.cfg.every == 0:
            plot_confusion(conf, names, out / f"confusion_t{task}_{_safe(stage)}_e{epoch}.png",
                           title=f"valid confusion, {self._where(run, task)}stage {stage}, "
                                 f"epoch {epoch + 1}", dpi=self.cfg.dpi)

    @hookimpl
    def clapkit_stage_end(self, run: Any, task: int, stage: str) -> None:
        self._curves(run)

    @hookimpl
    def clapkit_task_end(self, run: Any, task: int, metrics: dict[str, Any]) -> None:
        if self._dir(run) is None:
            return
        per_task = sorted((int(k.split("/", 1)[1]), _float(v)) for k, v in metrics.items()
                          if k.startswith("acc_task/"))
        full = metrics.get("accuracy_matrix")
        if isinstance(full, list) and full and all(isinstance(r, list) for r in full):
            self.acc_rows = {t: [_float(v) for v in r] for t, r in enumerate(full)}
        elif per_task:
            self.acc_rows[task] = [v for _, v in per_task]
        conf = metrics.get("valid/confusion")
        if conf:
            conf = seen_confusion(conf, run, task)
            suffix = f"_t{task}" if self._incremental(run) else ""
            when = f"end of task {task}" if self._incremental(run) else "end of training"
            plot_confusion(conf, self._names(run, len(conf)),
                           self._dir(run) / f"confusion_final{suffix}.png",  # type: ignore[operator]
                           title=f"valid confusion, {when}", dpi=self.cfg.dpi)
        self._accuracy_matrix(run)
        self._curves(run)

    @hookimpl
    def clapkit_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        self._accuracy_matrix(run)
        self._curves(run)
        conf = summary.get("final/valid_confusion")
        out = self._dir(run)
        if conf and out is not None and not self._incremental(run):
            # the model the summary's final/* figures come from (best.pt when selected),
            # drawn over the task-end (last epoch) matrix of the same name
            which = summary.get("final/checkpoint", "last")
            plot_confusion(conf, self._names(run, len(conf)), out / "confusion_final.png",
                           title=f"valid confusion, final model ({which}.pt)",
                           dpi=self.cfg.dpi)


def build(cfg: PlotsConfig, ctx: BuildContext) -> PlotsLogger:
    """PNG confusion matrices per epoch, accuracy-matrix heatmap and learning curves."""
    return PlotsLogger(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("logger", "plots", build, config=PlotsConfig)
