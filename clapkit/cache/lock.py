"""A lock file so two builders of one cache file never write it at the same time.

``os.open(O_CREAT | O_EXCL)`` is atomic on local and NFSv3+ file systems. A lock left by a
process that died on this host is detected (its pid is gone) and removed.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ..atomic import pid_alive
from ..errors import ClapkitError


class BuildLock:
    """``with BuildLock(target): ...`` holds ``<target>.lock`` for the block."""

    def __init__(self, target: Path, timeout: float = 3600.0, poll: float = 0.2) -> None:
        self.path = target.with_name(target.name + ".lock")
        self.timeout, self.poll = timeout, poll
        self.waited = False

    def _stale(self) -> bool:
        try:
            pid_s, host = self.path.read_text().split()[:2]
            return host == socket.gethostname() and not pid_alive(int(pid_s))
        except (OSError, ValueError):
            return False  # being written right now, or unreadable: not provably stale

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() >= deadline:
                    raise ClapkitError(
                        f"cache lock {self.path} is held by another builder "
                        f"({self._holder()}) for more than {self.timeout:.0f} s; remove the "
                        "file if no builder is running") from None
                self.waited = True
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
            return

    def _holder(self) -> str:
        try:
            pid, host = self.path.read_text().split()[:2]
            return f"pid {pid} on {host}"
        except (OSError, ValueError):
            return "unknown holder"

    def release(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
