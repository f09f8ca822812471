"""Atomic file writes and the sweep of temporaries that a killed writer leaves behind.

Every file clapkit publishes (checkpoints, metrics CSV, PNG figures, cache files, the resolved
recipe) is written to a temporary name in the target folder, flushed, fsynced and moved into
place with ``os.replace``: a reader sees the old file or the complete new one, never a torn
write. One helper does it so that the naming (which :func:`sweep_temps` recognises) and the
permissions are the same everywhere.

Permissions: ``tempfile.mkstemp`` creates files ``0600``; a published file gets the mode a
plain ``open()`` would give it (``0666`` minus the umask), so outputs are readable by the
user's group as usual.

Temporary names are ``.<name>.<pid>-<random>.tmp``. A writer killed with ``kill -9`` cannot
remove its temporary; :func:`sweep_temps` removes the ones whose process is gone.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_TEMP_RE = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]+\.tmp$")


def default_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the process umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and racy)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name(path: Path) -> str:
    """A name prefix for the temporary of ``path`` (pid included, see :func:`sweep_temps`)."""
    return f".{path.name}.{os.getpid()}-"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], *,
                 mode: int | None = None) -> Path:
    """Call ``write(fh)`` on a binary temp file beside ``path``, fsync, chmod (``mode`` or
    :func:`default_mode`), then ``os.replace`` it onto ``path``. On any error the temp file
    is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_name(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode(encoding)))


def json_safe(v: Any, other: Callable[[Any], Any] | None = None) -> Any:
    """A copy of ``v`` that strict JSON accepts: dict keys as strings, tuples as lists,
    tensors/arrays as lists, paths as strings and non-finite floats (NaN/inf, e.g. a metric
    with no samples) as ``null``. Other objects go through ``other`` (e.g. ``str``) when given,
    else stay as they are (``json.dumps`` then says what it cannot write)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x, other) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x, other) for x in v]
    if hasattr(v, "tolist"):                 # torch.Tensor, numpy arrays and scalars
        return json_safe(v.tolist(), other)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Path):
        return str(v)
    return other(v) if other is not None else v


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (through :func:`json_safe`, so a NaN metric is
    ``null``, never the invalid ``NaN`` token) with :func:`atomic_write_text`."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Move a file written elsewhere (e.g. an HDF5 ``.partial``) into place: fsync, give it
    the default mode, ``os.replace``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.fchmod(fd, default_mode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return Path(path)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temps(folder: str | Path, *, recursive: bool = False,
                live_too: bool = False) -> list[Path]:
    """Remove the temporaries of :func:`atomic_write` in ``folder`` whose writer process is
    gone (killed mid-write); returns what was removed. Live writers' files are kept unless
    ``live_too`` (for a folder the caller holds a lock on, where no one else writes)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    for p in candidates:
        m = _TEMP_RE.match(p.name)
        if m is None or not p.is_file():
            continue
        if not live_too and pid_alive(int(m.group(1))):
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def sweep_dead_dirs(parent: str | Path, name: str) -> list[Path]:
    """Remove the work folders ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>-*`` in
    ``parent`` that a killed process left behind (its pid is gone); returns what was removed.
    Used by generators that build a folder aside and rename it into place."""
    import shutil
    parent = Path(parent)
    if not parent.is_dir():
        return []
    rx = re.compile(rf"^\.{re.escape(name)}\.(?:tmp|old)-(\d+)-[A-Za-z0-9]+$")
    removed = []
    for p in parent.glob(f".{name}.*"):
        m = rx.match(p.name)
        if m is None or not p.is_dir() or pid_alive(int(m.group(1))):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
