"""`jsonl` logger: one JSON object per event in ``<out_dir>/metrics.jsonl`` (+ optional CSV).

The JSONL file is appended to and flushed line by line, so a crashed or resumed run keeps its
history and ``tail -f`` works. Values are made strictly JSON-safe (tensors -> lists, NaN and
infinities -> null). With ``csv = true`` the epoch scalars also go to ``<out_dir>/metrics.csv``,
one row per epoch; the column set grows when a later stage logs new loss terms, so the file is
rewritten (atomically) with the union of columns each epoch -- it stays small.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import attrs

from clapkit import hookimpl
from clapkit.interfaces import BuildContext

CSV_INDEX = ("task", "stage", "epoch")


@attrs.frozen
class JsonlConfig:
    """``file``: JSONL name inside the run folder; ``csv``: also write ``csv_file`` with the
    per-epoch scalars."""

    file: str = attrs.field(default="metrics.jsonl", validator=attrs.validators.min_len(1))
    csv: bool = False
    csv_file: str = attrs.field(default="metrics.csv", validator=attrs.validators.min_len(1))


def json_safe(value: Any) -> Any:
    """Plain JSON types only: tensors/arrays -> lists, non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):            # torch.Tensor, numpy arrays and scalars
        return json_safe(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "numel") and value.numel() == 1:
        return float(value)
    return None


class JsonlLogger:
    """Machine-readable event log (rank 0 only)."""

    def __init__(self, cfg: JsonlConfig) -> None:
        self.cfg = cfg
        self._fh: TextIO | None = None
        self._out_dir: Path | None = None
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = []

    # -- files -----------------------------------------------------------------------------

    def _open(self, run: Any) -> TextIO:
        out = Path(run.out_dir)
        if self._fh is None or self._out_dir != out:
            self.close()
            out.mkdir(parents=True, exist_ok=True)
            self._out_dir = out
            self._fh = open(out / self.cfg.file, "a", encoding="utf-8")  # noqa: SIM115
            if self.cfg.csv:
                self._load_csv(out / self.cfg.csv_file)
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _emit(self, run: Any, event: str, **fields: Any) -> None:
        if getattr(run, "rank", 0) != 0:
            return
        fh = self._open(run)
        record = {"event": event, "time": round(time.time(), 3), **fields}
        fh.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        fh.flush()

    def _load_csv(self, path: Path) -> None:
        """Resume: keep the rows of an earlier (interrupted) run in the same folder."""
        self._rows, self._columns = [], list(CSV_INDEX)
        if not path.is_file():
            return
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            self._columns = list(reader.fieldnames or CSV_INDEX)
            self._rows = [dict(r) for r in reader]

    def _write_csv(self, task: int, stage: str, epoch: int, metrics: dict[str, Any]) -> None:
        assert self._out_dir is not None
        row: dict[str, Any] = {"task": task, "stage": stage, "epoch": epoch}
        for k, v in metrics.items():
            s = _scalar(v)
            if s is not None:
                row[k] = s
        self._rows.append(row)
        self._columns += sorted(k for k in row if k not in self._columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, restval="")
        writer.writeheader()
        writer.writerows(self._rows)
        path = self._out_dir / self.cfg.csv_file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self._out_dir)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- hooks -----------------------------------------------------------------------------

    @hookimpl
    def clapkit_run_start(self, run: Any) -> None:
        self._emit(run, "run_start", num_tasks=getattr(run, "num_tasks", None),
                   class_names=list(getattr(run, "class_names", []) or []))

    @hookimpl
    def clapkit_task_start(self, run: Any, task: int, classes: list[int]) -> None:
        self._emit(run, "task_start", task=task, classes=list(classes))

    @hookimpl
    def clapkit_stage_start(self, run: Any, task: int, stage: str, trainable: list[str]) -> None:
        self._emit(run, "stage_start", task=task, stage=stage, trainable=list(trainable))

    @hookimpl
    def clapkit_epoch_end(self, run: Any, task: int, stage: str, epoch: int,
                          metrics: dict[str, Any]) -> None:
        self._emit(run, "epoch_end", task=task, stage=stage, epoch=epoch, metrics=metrics)
        if self.cfg.csv and getattr(run, "rank", 0) == 0:
            self._write_csv(task, stage, epoch, metrics)

    @hookimpl
    def clapkit_stage_end(self, run: Any, task: int, stage: str) -> None:
        self._emit(run, "stage_end", task=task, stage=stage)

    @hookimpl
    def clapkit_task_end(self, run: Any, task: int, metrics: dict[str, Any]) -> None:
        self._emit(run, "task_end", task=task, metrics=metrics)

    @hookimpl
    def clapkit_checkpoint_saved(self, run: Any, path: str) -> None:
        self._emit(run, "checkpoint_saved", path=str(path))

    @hookimpl
    def clapkit_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        self._emit(run, "run_end", metrics=summary)
        self.close()


def build(cfg: JsonlConfig, ctx: BuildContext) -> JsonlLogger:
    """One JSON object per event in metrics.jsonl; optional per-epoch metrics.csv."""
    return JsonlLogger(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("logger", "jsonl", build, config=JsonlConfig)
