"""``clapkit recipe check``: what a run would fail on at build time, found without running it.

After validation (keys, values, plugin names) the check does what a run does before its first
step -- it calls the same :func:`clapkit.engine.assembly.assemble` as ``run`` and ``eval``, so
it refuses what they refuse with the same message -- cheaply and never over the network:

* the recipe's own rules (duplicate stage names, options that only make sense together,
  memory without selector, stages that run in no task, ...);
* the dataset is opened (the scenario's ``task_to_cls_num`` must sum to its classes); when it
  is not on disk, a stand-in of the same layout is generated from the plugin's
  ``test_options`` (tiny) and the class count is not checked;
* the backbone is built with the network switched off (:func:`no_network`); when its weights
  are not on this machine, first the same architecture without them: the plugin's
  ``offline_options`` registry meta (a callable ``config -> option overrides``; for open_clip
  ``pretrained = ""``, the recipe's model randomly initialised, so widths, depths and
  parameter names are the real ones); failing that, the plugin's ``test_options`` stand-in
  (for open_clip: the tiny random CLIP, whose parameter names have the same structure);
* the pipeline is composed (prompt views, head view, adapter places, loss needs) and every
  stage's ``train`` globs must select parameters that exist (after task 0's growth) and its
  ``lr_groups`` must match some of them.

Each stand-in is reported as a note, so a passing check says what it could not verify;
:func:`missing_on_machine` lists what the stand-ins replaced (``recipe check --strict`` fails
on it: the recipe would not run on this machine as it is).
"""

from __future__ import annotations

import contextlib
import inspect
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from .build import build_component
from .errors import ClapkitError
from .interfaces import BuildContext
from .plugins import PluginHost
from .recipe import ComponentSpec, Recipe, load_recipe


@attrs.define
class CheckReport:
    recipe: Recipe
    notes: list[str] = attrs.field(factory=list)
    stages: dict[str, int] = attrs.field(factory=dict)   # stage name -> trainable tensors


class StandInNote(str):
    """A note saying that a stand-in replaced something this machine lacks; ``missing`` is
    that thing in one line (what ``recipe check --strict`` reports)."""

    missing: str

    def __new__(cls, text: str, missing: str) -> StandInNote:
        note = super().__new__(cls, text)
        note.missing = missing
        return note


def missing_on_machine(report: CheckReport) -> list[str]:
    """One line per piece of data or weights that a stand-in replaced in the check (empty:
    the recipe runs on this machine as it is)."""
    return [n.missing for n in report.notes if isinstance(n, StandInNote)]


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Every socket connect fails at once inside the block (a check never downloads)."""
    real = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real(self, address)
        raise OSError(f"network disabled during `clapkit recipe check` (connect to {address})")

    real_lookup = socket.getaddrinfo

    def no_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (None, "localhost", "127.0.0.1", "::1"):
            return real_lookup(host, *args, **kwargs)
        raise OSError(f"network disabled during `clapkit recipe check` (lookup of {host})")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.getaddrinfo = no_lookup  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]
        socket.getaddrinfo = real_lookup  # type: ignore[assignment]


def _stand_in(spec: ComponentSpec, ctx: BuildContext, host: PluginHost,
              keep_options: bool) -> ComponentSpec | None:
    """``spec`` with its plugin's ``test_options`` (over the recipe's options when
    ``keep_options``, else over the plugin's defaults); None when the plugin has none."""
    entry = host.registries[spec.kind].get(spec.plugin)
    if entry.test_options is None:
        return None
    opts = entry.test_options(ctx)
    base = spec.config if keep_options else entry.config_cls()
    return attrs.evolve(spec, config=attrs.evolve(base, **opts))


def _reason(exc: Exception) -> str:
    """The cause in a few words: the last ``": "`` part of the first sentence."""
    text = str(exc).splitlines()[0].split(". ")[0]
    return text.rsplit(": ", 1)[-1][:160]


def _offline(spec: ComponentSpec, host: PluginHost) -> tuple[ComponentSpec, str] | None:
    """``(spec, what changed)``: ``spec`` with its plugin's ``offline_options`` overrides (the
    same component built without what must be downloaded); None when it declares none."""
    offline = host.registries[spec.kind].get(spec.plugin).meta.get("offline_options")
    if offline is None:
        return None
    opts = offline(spec.config)
    changed = ", ".join(f"{k} = {v!r}" for k, v in opts.items())
    return attrs.evolve(spec, config=attrs.evolve(spec.config, **opts)), changed


def _build_with_stand_in(spec: ComponentSpec, ctx: BuildContext, host: PluginHost,
                         what: str, notes: list[str], force: bool = False) -> Any:
    try:
        if force:
            raise ClapkitError("stand-in requested")
        with no_network():
            return build_component(spec, ctx)
    except ClapkitError as exc:
        missing = f"{spec.section}: {what} not on this machine ({_reason(exc)})"
        offline = None if force else _offline(spec, host)
        if offline is not None:
            try:
                with no_network():
                    built = build_component(offline[0], ctx)
            except ClapkitError:
                pass
            else:
                notes.append(StandInNote(
                    f"{missing}; checked with the same '{spec.plugin}' component built "
                    f"offline ({offline[1]}): its shapes and parameter names are the "
                    "recipe's, the weights themselves were not verified", missing))
                return built
        for keep in (True, False):
            alt = _stand_in(spec, ctx, host, keep)
            if alt is None:
                break
            try:
                with no_network():
                    built = build_component(alt, ctx)
            except ClapkitError:
                continue
            notes.append(StandInNote(f"{missing}; checked with the '{spec.plugin}' "
                                     "plugin's test stand-in", missing))
            return built
        raise


def check_recipe(path: str | Path, host: PluginHost,
                 overrides: list[str] | tuple[str, ...] = (),
                 work_dir: Path | None = None, stand_ins: bool = False) -> CheckReport:
    """Validate ``path`` and build its pipeline as a run would (see the module docstring).

    ``stand_ins``: build with the data and backbone stand-ins even where the real ones are
    available (the test suite checks every shipped recipe that way, machine-independently).
    """
    from .engine.assembly import PipelineBuildError, assemble, replay_growth
    from .engine.setup import resolve_device
    from .engine.stages import param_groups, select_parameters

    recipe = load_recipe(path, host, overrides)
    report = CheckReport(recipe=recipe)
    work = work_dir or Path(recipe.cache.dir) / "recipe-check"
    work.mkdir(parents=True, exist_ok=True)

    def build_part(spec: ComponentSpec, ctx: BuildContext, what: str) -> tuple[Any, bool]:
        before = len(report.notes)
        built = _build_with_stand_in(spec, ctx, host, what, report.notes, stand_ins)
        return built, len(report.notes) > before

    try:
        parts = assemble(recipe, host, device=resolve_device("cpu", 0), work_dir=work,
                         builder=build_part)       # the same assembly as run and eval
    except PipelineBuildError as exc:
        stand_in = next((n for n in report.notes if n.startswith(f"{recipe.backbone.section}:")
                         and n.endswith("test stand-in")), None)
        if stand_in is None:
            raise
        raise ClapkitError(f"{exc} [the pipeline was built on the backbone's test stand-in, "
                           "since the recipe's weights are not on this machine; the stand-in may be "
                           "smaller than the recipe's model, so this can be a limit of the "
                           "stand-in rather than of the recipe]") from exc
    report.notes.extend(parts.notes)
    pipe, sc = parts.pipeline, parts.scenario
    replay_growth(pipe, sc, 0)
    task_kw = "task" in inspect.signature(select_parameters).parameters
    for i, stage in enumerate(recipe.stages):
        key = f"stages[{i}]"
        kw = {"task": 0} if task_kw else {}
        params = select_parameters(pipe, stage, file=recipe.file, key=key, **kw)
        if not params:
            raise ClapkitError(f"{recipe.file}: {key}.train: stage '{stage.name}' selects no "
                               "trainable parameter")
        param_groups(params, stage, file=recipe.file, key=key)
        report.stages[stage.name] = len(params)
        if stage.epochs == 0:
            report.notes.append(f"stage '{stage.name}': epochs = 0, skipped (its parameters "
                                "are not trained)")
    if all(s.epochs == 0 for s in recipe.stages):
        report.notes.append("no stage trains (no stages, or all with epochs = 0): a run "
                            "evaluates the pipeline as built, as `clapkit eval RECIPE` does")
    return report
