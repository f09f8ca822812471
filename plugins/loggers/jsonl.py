"""`jsonl` logger: one JSON object per event in ``<out_dir>/metrics.jsonl`` (+ optional CSV).

The JSONL file is appended to and flushed line by line, so a crashed or resumed run keeps its
history and ``tail -f`` works. A resumed run first cuts the file (and the CSV) back to the
checkpoint it resumes from (``run.resumed_from``): a run killed after logging an epoch but
before checkpointing it repeats that epoch, and the log still holds each epoch once. Epoch and
task records carry their ``position`` for that.

The files live in the run folder: ``file``/``csv_file`` are names, not paths; another folder
inside it is chosen with ``dir``. Values are made strictly JSON-safe (tensors -> lists, NaN and
infinities -> null). With ``csv = true`` the epoch scalars also go to ``<out_dir>/metrics.csv``,
one row per epoch; the column set grows when a later stage logs new loss terms, so the file is
rewritten (atomically) with the union of columns each epoch -- it stays small.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any, TextIO

import attrs

from clapkit import hookimpl
from clapkit import validators as v
from clapkit.atomic import atomic_write_text, json_safe
from clapkit.interfaces import BuildContext

CSV_INDEX = ("task", "stage", "epoch")


#: sorts after every stage index: a task's end comes after all its epochs
TASK_DONE = 1 << 30


@attrs.frozen
class JsonlConfig:
    """``file``: JSONL name inside the run folder; ``csv``: also write ``csv_file`` with the
    per-epoch scalars; ``dir``: a sub-folder of the run folder for both ("" = the run folder
    itself; absolute paths and ``..`` are refused: a run writes only inside its folder)."""

    file: str = attrs.field(default="metrics.jsonl", validator=v.name)
    csv: bool = False
    csv_file: str = attrs.field(default="metrics.csv", validator=v.name)
    dir: str = attrs.field(default="", validator=lambda i, a, x: x == "" or v.inside(i, a, x))


def position_key(position: dict[str, Any] | None) -> tuple[int, int, int] | None:
    """Order of run positions: ``{"task", "stage", "epoch"}`` of an epoch, or
    ``{"task", "phase": "task_done"}`` after a task's end (a checkpoint's ``position``)."""
    if not isinstance(position, dict) or "task" not in position:
        return None
    if position.get("phase") == "task_done":
        return (int(position["task"]), TASK_DONE, 0)
    return (int(position["task"]), int(position.get("stage", 0)), int(position.get("epoch", 0)))


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

    def _folder(self, run: Any) -> Path:
        out = Path(run.out_dir)
        return out / self.cfg.dir if self.cfg.dir else out

    def _open(self, run: Any) -> TextIO:
        out = self._folder(run)
        if self._fh is None or self._out_dir != out:
            self.close()
            out.mkdir(parents=True, exist_ok=True)
            self._out_dir = out
            resumed = position_key(getattr(run, "resumed_from", None))
            if resumed is not None:
                self._cut_jsonl(out / self.cfg.file, resumed)
            self._fh = open(out / self.cfg.file, "a", encoding="utf-8")  # noqa: SIM115
            if self.cfg.csv:
                self._load_csv(out / self.cfg.csv_file, run, resumed)
        return self._fh

    @staticmethod
    def _cut_jsonl(path: Path, resumed: tuple[int, int, int]) -> None:
        """Drop the records from the first epoch/task record past the resumed checkpoint on
        (they are about to be written again)."""
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = len(lines)
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:           # a torn last line of a killed run
                keep = i
                break
            key = position_key(rec.get("position")) if isinstance(rec, dict) else None
            if key is not None and key > resumed:
                keep = i
                break
        if keep < len(lines):
            atomic_write_text(path, "".join(lines[:keep]))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _emit(self, run: Any, event: str, **fields: Any) -> None:
        if getattr(run, "rank", 0) != 0:
            return
        fh = self._open(run)
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if record.get("position") is None:
            record.pop("position", None)
        fh.write(json.dumps(json_safe(record, other=str), allow_nan=False) + "\n")
        fh.flush()

    def _load_csv(self, path: Path, run: Any, resumed: tuple[int, int, int] | None) -> None:
        """Resume: keep the rows of an earlier (interrupted) run in the same folder, up to
        the checkpoint resumed from."""
        self._rows, self._columns = [], list(CSV_INDEX)
        if resumed is None or not path.is_file():     # a new run starts a new table
            return
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            self._columns = list(reader.fieldnames or CSV_INDEX)
            self._rows = [dict(r) for r in reader]
        if resumed is not None:
            def key(r: dict[str, Any]) -> tuple[int, int, int] | None:
                try:
                    return (int(r["task"]), _stage_index(run, r["stage"]), int(r["epoch"]))
                except (KeyError, TypeError, ValueError):
                    return None
            self._rows = [r for r in self._rows if (k := key(r)) is not None and k <= resumed]

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
        atomic_write_text(self._out_dir / self.cfg.csv_file, buf.getvalue())

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
        self._emit(run, "epoch_end", task=task, stage=stage, epoch=epoch, metrics=metrics,
                   position={"task": task, "stage": _stage_index(run, stage), "epoch": epoch})
        if self.cfg.csv and getattr(run, "rank", 0) == 0:
            self._write_csv(task, stage, epoch, metrics)

    @hookimpl
    def clapkit_stage_end(self, run: Any, task: int, stage: str) -> None:
        self._emit(run, "stage_end", task=task, stage=stage)

    @hookimpl
    def clapkit_task_end(self, run: Any, task: int, metrics: dict[str, Any]) -> None:
        self._emit(run, "task_end", task=task, metrics=metrics,
                   position={"task": task, "phase": "task_done"})

    @hookimpl
    def clapkit_checkpoint_saved(self, run: Any, path: str) -> None:
        self._emit(run, "checkpoint_saved", path=str(path))

    @hookimpl
    def clapkit_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        self._emit(run, "run_end", metrics=summary)
        self.close()


def _stage_index(run: Any, stage: str) -> int:
    """The index of stage ``stage`` in the recipe (stage names are unique)."""
    stages = getattr(getattr(run, "recipe", None), "stages", None) or []
    for i, s in enumerate(stages):
        if getattr(s, "name", None) == stage:
            return i
    idx = getattr(run, "stage", None)
    return int(idx) if isinstance(idx, int) else 0


def build(cfg: JsonlConfig, ctx: BuildContext) -> JsonlLogger:
    """One JSON object per event in metrics.jsonl; optional per-epoch metrics.csv."""
    return JsonlLogger(cfg)


@hookimpl
def clapkit_register(registrar):
    # always_on: every run writes metrics.jsonl (whatever loggers its recipe lists); a
    # [log.NAME] table with plugin = "jsonl" replaces the default one with its options
    registrar.add("logger", "jsonl", build, config=JsonlConfig, always_on=True)
