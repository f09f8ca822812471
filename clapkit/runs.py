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
import os
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
    avg_acc: float | None = None        # class-incremental runs: mean over the tasks
    #: ``clapkit eval`` results in the folder: ``(checkpoint-split, WAR, UAR)``
    evals: tuple[tuple[str, float | None, float | None], ...] = ()
    note: str = ""                      # what of the folder could not be read
    #: image-text runs: the test split's (else valid's) retrieval and caption figures
    image_text: tuple[tuple[str, float], ...] = ()


#: the image-text figures a row shows (``image_text`` evaluation keys), with their labels
IMAGE_TEXT_KEYS = (("i2t_r1", "i2t R@1"), ("t2i_r1", "t2i R@1"), ("bleu4", "BLEU-4"),
                   ("cider", "CIDEr"))


def image_text_figures(summary: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    """The test split's image-text figures in ``summary`` (the valid split's when the run
    has no test split), labelled with the split."""
    for split in ("test", "valid"):
        got = tuple((f"{split} {label}", v) for key, label in IMAGE_TEXT_KEYS
                    if (v := _num(summary.get(f"{split}/{key}"))) is not None)
        if got:
            return got
    return ()


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
    """A folder a run wrote: ``recipe.toml`` and one of its outputs (``checkpoints``,
    ``metrics.jsonl``, ``summary.json``, a lock); or, with ``recipe.toml`` lost, a
    ``summary.json`` or a saved checkpoint (listed as damaged). A recipe file alone is no run."""
    try:
        if (p / "recipe.toml").is_file():
            return any(os.path.lexists(p / n) for n in ("checkpoints", "metrics.jsonl",
                                                          "summary.json", *LOCK_NAMES))
        return any(os.path.lexists(p / n) for n in ("summary.json", "checkpoints/last.pt",
                                                      "checkpoints/best.pt"))
    except OSError:
        return False


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable, not JSON, or JSON
    of another shape (a list, a number)."""
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return got if isinstance(got, dict) else None


def json_problem(path: Path) -> str | None:
    """Why ``path`` (present) is no JSON object, in a few words; None when it is one or is
    absent (absent is the normal state of a run that has not ended)."""
    if not os.path.lexists(path):
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"{path.name} unreadable ({exc.strerror or type(exc).__name__})"
    except ValueError:
        return f"{path.name} is not UTF-8 text"
    if not text.strip():
        return f"{path.name} is empty"
    try:
        got = json.loads(text)
    except (ValueError, RecursionError):
        return f"{path.name} is not JSON"
    return None if isinstance(got, dict) else f"{path.name} holds a {type(got).__name__}, " \
        "not an object"


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _count(v: Any) -> int | None:
    """A non-negative whole count (``epochs``) or None: never a crash on a wrong type."""
    f = _num(v)
    return int(f) if f is not None and f >= 0 and f == int(f) else None


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


def _lock_held(run: Path) -> bool:
    """Whether a live process holds one of the run's lock files."""
    return any(lock_held(run / n) for n in LOCK_NAMES)


def _status(run: Path, summary: dict[str, Any] | None, now: float) -> str:
    if summary is not None:
        return "done"
    held = next((h for h in (lock_held(run / n) for n in LOCK_NAMES) if h is not None), None)
    if held is not None:
        return "running" if held else "failed"
    stamps = [_mtime(p) for p in (run / "metrics.jsonl", run / "checkpoints" / "last.pt",
                                  run / "recipe.toml")]
    stamps = [t for t in stamps if t is not None]
    return "running" if stamps and now - max(stamps) < RECENT_S else "failed"


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime if path.is_file() else None
    except OSError:
        return None


def _from_jsonl(path: Path) -> tuple[int, float | None, float | None, float | None]:
    """(epochs, best valid UAR, test WAR, test UAR) from the event log."""
    epochs, best, tw, tu = 0, None, None, None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0, None, None, None
    except ValueError:                   # not UTF-8: nothing to read from it
        return 0, None, None, None
    for line in lines:
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        m = rec.get("metrics")
        m = m if isinstance(m, dict) else {}
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
    except (OSError, ValueError, RecursionError):
        return default
    section = recipe.get("run")
    name = section.get("name") if isinstance(section, dict) else None
    return name if isinstance(name, str) and name else default


def recipe_problem(run: Path) -> str | None:
    """Why the run folder's ``recipe.toml`` cannot be read, or None."""
    path = run / "recipe.toml"
    if not path.is_file():
        return "recipe.toml missing" if not os.path.lexists(path) else \
            "recipe.toml is not a file"
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"recipe.toml unreadable ({exc.strerror or type(exc).__name__})"
    except (ValueError, RecursionError):
        return "recipe.toml is not valid TOML"
    return None


def read_evals(run: Path) -> tuple[tuple[str, float | None, float | None], ...]:
    """``(checkpoint-split, WAR, UAR)`` of every ``eval-<ckpt>-<split>.json`` that
    ``clapkit eval`` wrote into the run folder, by name."""
    try:
        files = sorted(run.glob("eval-*.json"))
    except OSError:
        return ()
    out = []
    for f in files:
        got = _read_json(f)
        if got is not None:
            out.append((f.stem[len("eval-"):], _num(got.get("war")), _num(got.get("uar"))))
    return tuple(out)


def describe_run(run: Path, now: float | None = None) -> RunRow:
    """The row of one run folder; what cannot be read is named in ``note`` (never raised),
    so one damaged folder does not hide the others."""
    try:
        return _describe(run, time.time() if now is None else now)
    except Exception as exc:  # noqa: BLE001 - a folder this code did not foresee: marked
        return RunRow(folder=str(run), recipe="?", status="unreadable", epochs=None,
                      best_valid_uar=None, last_acc=None, test_war=None, test_uar=None,
                      note=f"{type(exc).__name__}: {exc}".splitlines()[0])


def _describe(run: Path, now: float) -> RunRow:
    name = recipe_name(run)
    summary = _read_json(run / "summary.json")
    notes = [n for n in (recipe_problem(run), json_problem(run / "summary.json")) if n]
    epochs, best, tw, tu = _from_jsonl(run / "metrics.jsonl")
    if summary is not None:
        epochs = _count(summary.get("epochs")) or epochs
        # the summary is the truth: a run that selects nothing has no best figure
        best = _num(summary.get("best/valid_uar"))
        for war_key, uar_key in (("best/test_war", "best/test_uar"),
                                 ("test/war", "test/uar"),
                                 ("final/test_war", "final/test_uar")):
            if uar_key in summary:
                tw, tu = _num(summary.get(war_key)), _num(summary.get(uar_key))
                break
    last = _num(summary.get("last_acc")) if summary is not None else None
    avg = _num(summary.get("avg_incremental_acc")) if summary is not None else None
    status = _status(run, summary, now)
    if notes and not _lock_held(run):    # summary.json is written whole, at the end: a bad
        status = "damaged"               # one is damage, not a run still being written
    return RunRow(folder=str(run), recipe=name, status=status,
                  epochs=epochs if (epochs or summary is not None) else None,
                  best_valid_uar=best, last_acc=last, test_war=tw, test_uar=tu, avg_acc=avg,
                  evals=read_evals(run), note="; ".join(notes),
                  image_text=image_text_figures(summary) if summary is not None else ())


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None and b is None else f"{pct(a)}/{pct(b)}"


def format_rows(rows: list[RunRow]) -> list[str]:
    """The table of ``clapkit runs``: a classification run fills best valid UAR, a
    class-incremental one last/avg accuracy; ``eval`` lists the figures ``clapkit eval``
    wrote (checkpoint-split WAR/UAR); ``image-text`` the retrieval R@1 and caption scores
    of an image-text run; ``note`` says what of a damaged folder is unreadable."""
    header = ["run folder", "recipe", "status", "epochs", "best valid UAR", "last/avg acc",
              "test WAR/UAR", "eval WAR/UAR", "image-text", "note"]
    cells = [header] + [[r.folder, r.recipe, r.status,
                         "-" if r.epochs is None else str(r.epochs), pct(r.best_valid_uar),
                         _pair(r.last_acc, r.avg_acc), _pair(r.test_war, r.test_uar),
                         ", ".join(f"{k} {_pair(w, u)}" for k, w, u in r.evals) or "-",
                         ", ".join(f"{k} {pct(v)}" for k, v in r.image_text) or "-",
                         r.note]
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
