"""The run folder: claimed by one run at a time, never overwritten by accident.

:class:`RunFolder` is entered before a run builds anything:

- **lock**: ``<out>/.clapkit.lock`` is locked with ``flock`` for the run's lifetime. The
  operating system drops the lock when the process ends however it ends (``kill -9``
  included), so there is no stale lock to clear by hand; a second run into the same folder
  is refused with the holder's pid and host.
- **refusal**: a folder that already holds a run (a checkpoint, ``summary.json`` or
  ``metrics.jsonl``) is continued only with ``--resume`` and replaced only with
  ``--overwrite``; otherwise the run stops before touching it and says so. ``--overwrite``
  removes what clapkit and its built-in loggers write there (:data:`RUN_OUTPUTS`) and
  nothing else, so ``--out .`` cannot wipe a project.
- **torn temporaries**: atomic writes (:mod:`clapkit.atomic`) of a killed run leave
  ``.<name>.<pid>-<rand>.tmp`` files; holding the lock, the run removes them all.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from ..atomic import sweep_temps
from ..errors import ClapkitError

LOCK_NAME = ".clapkit.lock"
#: any of them present means the folder holds a run (a recipe.toml alone does not: users
#: keep recipes in folders of that name)
RUN_MARKERS = ("checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "metrics.jsonl")
#: what --overwrite removes: the outputs of the core and of the built-in loggers
RUN_OUTPUTS = ("checkpoints", "recipe.toml", "summary.json", "metrics.jsonl", "metrics.csv",
               "plots", "tensorboard", "eval")


def holds_run(out: Path) -> list[str]:
    """The run markers present in ``out`` (empty: no run there)."""
    return [m for m in RUN_MARKERS if (out / m).exists()]


class RunFolder:
    """Context manager claiming ``out`` for one run (see the module docstring)."""

    def __init__(self, out: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        if resume and overwrite:
            raise ClapkitError("--resume and --overwrite contradict each other: resume "
                               "continues the run in the folder, overwrite replaces it")
        self.out = Path(out)
        self.resume, self.overwrite = resume, overwrite
        self._fd: int | None = None
        self.swept: list[Path] = []

    # -- lock -----------------------------------------------------------------------------

    def _lock(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise ClapkitError(f"--out {self.out} is a file, not a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise ClapkitError(f"{self.out} is in use by another clapkit run ({holder}); wait "
                               "for it to finish or choose another folder with --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    # -- claim ----------------------------------------------------------------------------

    def claim(self) -> RunFolder:
        """Lock, refuse or clear, sweep; see the module docstring."""
        self._lock()
        try:
            present = holds_run(self.out)
            if self.resume:
                if not (self.out / "checkpoints" / "last.pt").is_file():
                    raise ClapkitError(f"--resume: no checkpoint at "
                                       f"{self.out / 'checkpoints' / 'last.pt'} (run without "
                                       "--resume to start afresh)")
            elif present:
                if not self.overwrite:
                    raise ClapkitError(
                        f"{self.out} already holds a run ({', '.join(present[:3])}); continue "
                        "it with --resume, write elsewhere with --out NEW, or replace it "
                        "with --overwrite")
                self._clear()
            self.swept = sweep_temps(self.out, recursive=True, live_too=True)
        except BaseException:
            self.release()
            raise
        return self

    def _clear(self) -> None:
        """--overwrite: remove the old run's outputs (:data:`RUN_OUTPUTS`)."""
        for name in RUN_OUTPUTS:
            p = self.out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def __enter__(self) -> RunFolder:
        return self.claim()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
