"""``clapkit runs [DIR]``: one line per run folder found under DIR.

A run folder holds ``recipe.toml`` (the resolved recipe) and at least one of what a run
writes next (``checkpoints/``, ``metrics.jsonl``, ``summary.json``, a lock file). What a
line shows comes from the files of the run, cheapest first: ``summary.json`` (written at the
end), else ``metrics.jsonl`` (per-epoch events, when the jsonl logger is on), else the
checkpoints' timestamps. Status: ``done`` (summary written), ``running`` (a live process holds
the run's lock, or without a lock file: a file changed in the last ``RECENT_S`` seconds),
``failed`` (stopped before the end: an error or an interruption; ``clapkit run --resume``
continues it). A run holds ``RUN_DIR/.clapkit.lock`` with ``flock`` while its process lives
(the OS drops it however the process ends), so a held lock means running and a free one means
the process is gone; folders without a lock file fall back to the file times.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from pathlib import Path
from typing import Any

import attrs

from .report import pct

RECENT_S = 600.0
LOCK_NAMES = (".clapkit.lock",)


@attrs.frozen
class RunRow:
    folder: str
    recipe: str
    status: str
    epochs: int | None
    best_valid_uar: float | None
    last_acc: float | None              # class-incremental runs: end of the last task
    test_war: float | None
    test_uar: float | None


def find_runs(root: Path, max_depth: int = 3) -> list[Path]:
    """Run folders under ``root`` (``root`` itself included), sorted by path."""
    found: list[Path] = []

    def walk(p: Path, depth: int) -> None:
        if is_run_folder(p):
            found.append(p)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        for c in children:
            walk(c, depth + 1)

    walk(root, 0)
    return found


def is_run_folder(p: Path) -> bool:
    if not (p / "recipe.toml").is_file():
        return False
    return any((p / n).exists() for n in ("checkpoints", "metrics.jsonl", "summary.json",
                                           *LOCK_NAMES))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def lock_held(path: Path) -> bool | None:
    """Whether another process holds the run lock at ``path`` (None: no lock file)."""
    if not path.is_file():
        return None
    import fcntl
    import os
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _status(run: Path, summary: dict[str, Any] | None, now: float) -> str:
    if summary is not None:
        return "done"
    held = next((h for h in (lock_held(run / n) for n in LOCK_NAMES) if h is not None), None)
    if held is not None:
        return "running" if held else "failed"
    stamps = [p.stat().st_mtime for p in (run / "metrics.jsonl", run / "checkpoints" / "last.pt",
                                          run / "recipe.toml") if p.is_file()]
    return "running" if stamps and now - max(stamps) < RECENT_S else "failed"


def _from_jsonl(path: Path) -> tuple[int, float | None, float | None, float | None]:
    """(epochs, best valid UAR, test WAR, test UAR) from the event log."""
    epochs, best, tw, tu = 0, None, None, None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0, None, None, None
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        m = rec.get("metrics") or {}
        if rec.get("event") == "epoch_end":
            epochs += 1
            v = _num(m.get("best/valid_uar")) or _num(m.get("valid/uar"))
            if v is not None:
                best = v if best is None else max(best, v)
        elif rec.get("event") == "task_end":
            tw, tu = _num(m.get("test/war")) or tw, _num(m.get("test/uar")) or tu
    return epochs, best, tw, tu


def recipe_name(run: Path, default: str = "?") -> str:
    """``run.name`` of the run folder's resolved recipe (``default`` when unreadable)."""
    try:
        recipe = tomllib.loads((run / "recipe.toml").read_text(encoding="utf-8"))
        return str(recipe.get("run", {}).get("name", default))
    except (OSError, ValueError):
        return default


def describe_run(run: Path, now: float | None = None) -> RunRow:
    now = time.time() if now is None else now
    name = recipe_name(run)
    summary = _read_json(run / "summary.json")
    epochs, best, tw, tu = _from_jsonl(run / "metrics.jsonl")
    if summary is not None:
        epochs = int(summary.get("epochs", epochs) or epochs)
        # the summary is the truth: a run that selects nothing has no best figure
        best = _num(summary.get("best/valid_uar"))
        for war_key, uar_key in (("best/test_war", "best/test_uar"),
                                 ("test/war", "test/uar"),
                                 ("final/test_war", "final/test_uar")):
            if uar_key in summary:
                tw, tu = _num(summary.get(war_key)), _num(summary.get(uar_key))
                break
    last = _num(summary.get("last_acc")) if summary is not None else None
    return RunRow(folder=str(run), recipe=name, status=_status(run, summary, now),
                  epochs=epochs if (epochs or summary is not None) else None,
                  best_valid_uar=best, last_acc=last, test_war=tw, test_uar=tu)


def format_rows(rows: list[RunRow]) -> list[str]:
    header = ["run folder", "recipe", "status", "epochs", "best valid UAR", "last acc",
              "test WAR/UAR"]
    cells = [header] + [[r.folder, r.recipe, r.status,
                         "-" if r.epochs is None else str(r.epochs), pct(r.best_valid_uar),
                         pct(r.last_acc),
                         "-" if r.test_uar is None else f"{pct(r.test_war)}/{pct(r.test_uar)}"]
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
