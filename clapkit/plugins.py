"""Plugin loading: the ``clapkit`` entry-point group, recipe ``plugins = [...]`` modules.

Built-in components live in the ``clapkit_plugins`` distribution module-by-module and are
found through the same entry-point group as any third-party package. Each entry point is
loaded on its own, so one broken install never hides the others: the failure is kept (name,
distribution, exception) and shown by ``clapkit plugins`` and by any lookup that misses.

``CLAPKIT_DISABLE_PLUGIN_AUTOLOAD=1`` skips third-party entry points (those of every
distribution but clapkit itself), like pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata as md
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import ClapkitError, suggest
from .registry import Registrar, Registries

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "clapkit"
DISABLE_AUTOLOAD_ENV = "CLAPKIT_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "clapkit"


@attrs.define
class PluginInfo:
    """What ``clapkit plugins --hooks`` shows for one loaded plugin."""

    name: str
    provider: str
    version: str
    hooks: list[str] = attrs.field(factory=list)


@attrs.define
class BrokenPlugin:
    """An entry point or module that failed to load: the error, where in the plugin's own
    code it happened (``file:line``) and the traceback (``clapkit --debug plugins``)."""

    name: str
    provider: str
    error: str
    location: str | None = None
    traceback: str = ""

    def describe(self) -> str:
        where = f" (at {self.location})" if self.location else ""
        return f"{self.name} ({self.provider}): {self.error}{where}"


_CORE_DIR = os.path.dirname(os.path.abspath(__file__))


def describe_failure(exc: BaseException) -> tuple[str, str | None, str]:
    """``(message, "file:line" in the plugin's code or None, traceback text)`` of an import
    or registration failure. The location is the innermost frame outside importlib and
    the clapkit core, so a bad ``registrar.add`` call points at the plugin's line."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"SyntaxError: {exc.msg}", f"{exc.filename}:{exc.lineno}", text
    location = None
    for frame in traceback.extract_tb(exc.__traceback__):
        f = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else ""
        if f and not f.startswith(_CORE_DIR + os.sep) and "importlib" not in f \
                and f"{os.sep}pluggy{os.sep}" not in f:
            location = f"{frame.filename}:{frame.lineno}"
    return f"{type(exc).__name__}: {exc}", location, text


class _Manager(pluggy.PluginManager):
    """Like pytest's: unmarked module functions named ``clapkit_*`` are hook implementations
    too, so a misspelled hook name is caught by ``check_pending`` instead of ignored."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("clapkit_"):
            method = getattr(plugin, name, None)
            if callable(method) and not isinstance(method, type):
                return {}
        return opts


class PluginHost:
    """The pluggy manager plus the registries it fills.

    ``host.registries`` holds the components; ``host.hook`` fires event hooks.
    """

    def __init__(self) -> None:
        self.pm = _Manager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries = Registries()
        self.plugins: dict[str, PluginInfo] = {}
        self.broken: list[BrokenPlugin] = []
        self._spec_names = {n for n in dir(hookspecs) if n.startswith("clapkit_")}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self, autoload_third_party: bool | None = None) -> None:
        """Load every ``clapkit`` entry point, each on its own."""
        if autoload_third_party is None:
            autoload_third_party = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        eps = md.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: (e.dist.name if e.dist else "", e.name)):
            dist = ep.dist.name if ep.dist else "unknown"
            version = ep.dist.version if ep.dist else ""
            if not autoload_third_party and _norm(dist) != OWN_DISTRIBUTION:
                continue
            if ep.name in self.plugins:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not fatal
                self._mark_broken(ep.name, dist, *describe_failure(exc))
                continue
            self.add_plugin(obj, ep.name, dist, version)

    def load_module(self, dotted: str, source: str = "recipe",
                    untrusted_dir: Path | None = None) -> None:
        """Load a plugin module named in a recipe's ``plugins = [...]`` list (or given to
        ``pytest --clapkit-plugin``). A module already loaded through its entry point is
        not loaded twice.

        ``untrusted_dir`` is a run folder whose recipe named the module: a module that would
        be imported from inside it (a ``.py`` shipped with a downloaded run) is refused, as
        importing it runs its code (see :func:`refuse_untrusted_module`)."""
        if dotted in self.plugins:
            return
        if untrusted_dir is not None:
            refuse_untrusted_module(dotted, untrusted_dir, source)
        try:
            obj = importlib.import_module(dotted)
        except ModuleNotFoundError as exc:
            if exc.name and (dotted == exc.name or dotted.startswith(exc.name + ".")):
                raise ClapkitError(
                    f"{source}: plugin module '{dotted}' is not on sys.path (no module named "
                    f"'{exc.name}'); put the folder that holds it on PYTHONPATH (e.g. "
                    f"PYTHONPATH=/path/to/folder clapkit ...) or install its package "
                    f"(pip install -e /path/to/package)") from exc
            msg, where, _ = describe_failure(exc)
            raise ClapkitError(f"{source}: plugin module '{dotted}' failed to import"
                               f"{' at ' + where if where else ''}: {msg} (a module it "
                               f"imports is not installed)") from exc
        except Exception as exc:  # noqa: BLE001 - any import failure, located
            msg, where, _ = describe_failure(exc)
            raise ClapkitError(f"{source}: plugin module '{dotted}' failed to import"
                               f"{' at ' + where if where else ''}: {msg}") from exc
        if self.pm.is_registered(obj):      # already loaded through its entry point
            return
        dist, version = _distribution_of(dotted)
        self.add_plugin(obj, dotted, dist, version, strict=True)

    def add_plugin(self, obj: Any, name: str, provider: str, version: str = "",
                   strict: bool = False) -> bool:
        """Register ``obj`` (module or object) as plugin ``name`` and run its registration.

        A hook implementation whose name is no clapkit hook fails here, never later.
        Returns False (and records the failure) when the plugin is broken, unless ``strict``.
        """
        if self.pm.is_registered(obj):      # the same module under another name: loaded
            return True
        try:
            self._check_hook_names(obj, name)
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ClapkitError) as exc:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            if strict:
                raise ClapkitError(f"plugin {name} ({provider}): {exc}") from exc
            self._mark_broken(name, provider, str(exc))
            return False
        info = PluginInfo(name, provider, version,
                          sorted(c.name for c in self.pm.get_hookcallers(obj) or []))
        self.plugins[name] = info
        registrar = Registrar(self.registries, provider, version, name)
        for impl in self.pm.hook.clapkit_register.get_hookimpls():
            if impl.plugin is obj:
                try:
                    impl.function(registrar=registrar)
                except Exception as exc:  # noqa: BLE001
                    registrar.rollback()          # all or nothing: no half-added entries
                    self.pm.unregister(obj)
                    del self.plugins[name]
                    msg, where, text = describe_failure(exc)
                    at = f" at {where}" if where else ""
                    if strict:
                        if isinstance(exc, ClapkitError):
                            raise
                        raise ClapkitError(f"plugin {name} ({provider}) failed to register"
                                           f"{at}: {msg}") from exc
                    self._mark_broken(name, provider, f"registration failed: {msg}", where,
                                      text)
                    return False
        return True

    def _check_hook_names(self, obj: Any, name: str) -> None:
        """Reject ``clapkit_*`` functions marked as hooks that match no spec (typos)."""
        for attr in dir(obj):
            if not attr.startswith("clapkit_") or attr in self._spec_names:
                continue
            fn = getattr(obj, attr, None)
            if callable(fn) and not isinstance(fn, type):
                close = suggest(attr, self._spec_names)
                hint = f"; did you mean '{close}'?" if close else ""
                raise ClapkitError(f"unknown hook '{attr}'{hint}")

    def _mark_broken(self, name: str, provider: str, error: str, location: str | None = None,
                     text: str = "") -> None:
        broken = BrokenPlugin(name, provider, error, location, text)
        self.broken.append(broken)
        for reg in self.registries:
            reg.broken.append(broken.describe())
        log.warning("clapkit plugin %s failed to load: %s", name, error)

    # -- listing ---------------------------------------------------------------------------

    def register_listener(self, obj: Any, name: str | None = None) -> None:
        """Attach a run-time listener (a logger instance) to the event hooks."""
        self.pm.register(obj, name=name)
        self.pm.check_pending()

    def unregister_listener(self, obj: Any) -> None:
        if self.pm.is_registered(obj):
            self.pm.unregister(obj)


#: the opt-in that lets a run folder's recipe import plugin modules shipped in the folder
TRUST_OPTION = "--trust-run-code"


def module_origins(dotted: str) -> list[Path]:
    """Where the top-level package of ``dotted`` would be imported from, found on
    ``sys.path`` without importing anything: its file, or every folder of a (namespace)
    package, each as given and with symlinks resolved ([] when not found, or built in)."""
    top = dotted.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        where = [getattr(loaded, "__file__", None), *list(getattr(loaded, "__path__", []))]
    else:
        try:
            spec = importlib.machinery.PathFinder.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return []
        where = [spec.origin if spec.origin not in ("built-in", "frozen") else None,
                 *list(spec.submodule_search_locations or [])]
    found: list[Path] = []
    for w in where:
        if w:
            found += [Path(os.path.abspath(w)), Path(w).resolve()]
    return found


def shipped_in(dotted: str, folder: Path) -> Path | None:
    """The module file or package of ``dotted``'s top-level name inside ``folder``, if the
    folder ships one (whether or not it is on ``sys.path``)."""
    top = dotted.split(".")[0]
    for candidate in (folder / f"{top}.py", folder / top):
        if os.path.lexists(candidate):
            return candidate
    return None


def refuse_untrusted_module(dotted: str, run_dir: Path, source: str) -> None:
    """Raise when the plugin module ``dotted``, named by the recipe of the run folder
    ``run_dir``, would be imported from that folder (a symlink in it counts, and so does a
    namespace-package portion), or is shipped in it: a run folder is data someone may have
    sent, and importing its code needs the explicit opt-in (:data:`TRUST_OPTION`). The
    message suggests no ``PYTHONPATH``, which would run it."""
    folders = {Path(os.path.abspath(run_dir)), run_dir.resolve()}
    origins = module_origins(dotted)
    if origins:
        shipped = next((o for o in origins for f in folders if o.is_relative_to(f)), None)
    else:                   # not importable as things stand: is it shipped in the folder?
        shipped = next((s for f in folders if (s := shipped_in(dotted, f))), None)
    if shipped is None:
        return
    raise ClapkitError(
        f"{source}: plugin module '{dotted}' would be imported from the run folder "
        f"({shipped}); a run folder's recipe is not trusted to run code, so clapkit does not "
        f"import it. Read that code first; to run it, pass {TRUST_OPTION}")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _distribution_of(dotted: str) -> tuple[str, str]:
    top = dotted.split(".")[0]
    dists = md.packages_distributions().get(top) or []
    if dists:
        try:
            return dists[0], md.version(dists[0])
        except md.PackageNotFoundError:
            return dists[0], ""
    mod = sys.modules.get(dotted)
    return f"local:{getattr(mod, '__file__', dotted)}", ""


def get_plugin_host(modules: list[str] | tuple[str, ...] = (),
                    autoload_third_party: bool | None = None) -> PluginHost:
    """A fresh host with every entry point loaded, plus ``modules`` (recipe plugins)."""
    host = PluginHost()
    host.load_entry_points(autoload_third_party)
    for m in modules:
        host.load_module(m)
    return host


_default_host: PluginHost | None = None


def default_host() -> PluginHost:
    """The process-wide host with every entry point loaded (built on first use, then kept):
    what the command line and helpers without a host of their own use."""
    global _default_host
    if _default_host is None:
        _default_host = get_plugin_host()
    return _default_host
