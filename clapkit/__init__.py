"""clapkit: plugin-based fine-tuning of open_clip CLIP models.

The public API for plugin authors: ``hookimpl`` (mark hook implementations), the kind base
classes in :mod:`clapkit.interfaces`, and the section key classes in :mod:`clapkit.sections`.
"""

from importlib.metadata import PackageNotFoundError, version

from .hookspecs import hookimpl, hookspec

try:
    __version__ = version("clapkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "hookimpl", "hookspec"]
