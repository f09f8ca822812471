"""A lock file so two builders of one cache file never write it at the same time.

``os.open(O_CREAT | O_EXCL)`` is atomic on local and NFSv3+ file systems. A lock left by a
process that died on this host is detected (its pid is gone) and removed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ..atomic import pid_alive
from ..errors import ClapkitError

log = logging.getLogger(__name__)


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
                if not self.waited:
                    log.warning("%s", self.waiting_message())
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

    def waiting_message(self) -> str:
        """Who holds the lock, since when, whether it is known to be alive, and how long this
        builder waits: said once when a build starts to wait, instead of waiting silently."""
        try:
            fields = self.path.read_text().split()
        except OSError:
            fields = []
        pid, host = (fields + ["?", "?"])[:2]
        since = ""
        if len(fields) > 2:
            try:
                since = f", for {max(0.0, time.time() - float(fields[2])):.0f} s"
            except ValueError:
                pass
        if host == socket.gethostname():
            alive = " (alive)" if pid.isdigit() and pid_alive(int(pid)) else ""
            who = f"pid {pid}{alive} on this host"
        elif host == "?":
            who = "a builder that has not written its name yet"
        else:
            who = (f"pid {pid} on host {host} (another machine: clapkit cannot tell whether "
                   "it runs)")
        return (f"cache lock {self.path} is held by {who}{since}; waiting up to "
                f"{self.timeout:g} s for it, then stopping; remove the file if no builder "
                "is running")

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
