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
  ``.<name>.<pid>-<rand>.tmp`` files; holding the lock, the run removes those whose writer
  process is gone (a live process's file, clapkit's or not, is left alone).
- **a run killed before its first checkpoint** left its recipe and log but nothing to resume
  from: ``--resume`` then starts it from the beginning (said in a warning) rather than
  refusing, and a run that fails before writing anything removes the folder it created.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from ..atomic import sweep_temps
from ..errors import ClapkitError

log = logging.getLogger("clapkit.engine")

LOCK_NAME = ".clapkit.lock"
#: any of them present means the folder holds a run (a recipe.toml alone does not: users
#: keep recipes in folders of that name)
RUN_MARKERS = ("checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "metrics.jsonl")
#: what --overwrite removes: the outputs of the core and of the built-in loggers
RUN_OUTPUTS = ("checkpoints", "recipe.toml", "summary.json", "metrics.jsonl", "metrics.csv",
               "plots", "tensorboard", "eval", "accuracy_matrix.json", "backbone.pt",
               "eval-*.json")


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
        self._created = False
        self.swept: list[Path] = []
        #: --resume found the run's start but no checkpoint: it runs from the beginning
        self.restart = False

    # -- lock -----------------------------------------------------------------------------

    def _lock(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise ClapkitError(f"--out {self.out} is a file, not a folder")
        self._created = not self.out.exists()
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
                    if not (self.out / "recipe.toml").is_file():
                        raise ClapkitError(f"--resume: {self.out} holds no run to continue "
                                           f"(no {self.out / 'checkpoints' / 'last.pt'}); run "
                                           "without --resume to start one")
                    # started, then stopped before the first checkpoint: nothing to keep
                    log.warning("%s: the run stopped before its first checkpoint; --resume "
                                "starts it from the beginning", self.out)
                    self._clear()
                    self.restart = True
            elif present:
                if not self.overwrite:
                    raise ClapkitError(
                        f"{self.out} already holds a run ({', '.join(present[:3])}); continue "
                        "it with --resume, write elsewhere with --out NEW, or replace it "
                        "with --overwrite")
                self._clear()
            self.swept = sweep_temps(self.out, recursive=True)
        except BaseException:
            self.release()
            raise
        return self

    def _clear(self) -> None:
        """--overwrite: remove the old run's outputs (:data:`RUN_OUTPUTS`)."""
        for name in RUN_OUTPUTS:
            for p in (self.out.glob(name) if "*" in name else [self.out / name]):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()

    def __enter__(self) -> RunFolder:
        return self.claim()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
        if exc is not None and self._created:
            self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """A folder this run created and left holding only its lock (it failed before
        writing anything) goes, so a listing does not show a run that never was."""
        try:
            if {p.name for p in self.out.iterdir()} == {LOCK_NAME}:
                (self.out / LOCK_NAME).unlink()
                self.out.rmdir()
        except OSError:
            pass
