"""Building components from recipe specs through the registries."""

from __future__ import annotations

from typing import Any

import attrs

from .errors import ClapkitError
from .interfaces import BuildContext
from .plugins import PluginHost
from .recipe import ComponentSpec


def build_component(spec: ComponentSpec, ctx: BuildContext, **ctx_changes: Any) -> Any:
    """``entry.factory(spec.config, ctx)`` with ``ctx.section`` set to the spec's key.

    Factory failures caused by the input (ClapkitError, ValueError) are re-raised naming the
    recipe file and section.
    """
    host: PluginHost = ctx.host  # type: ignore[assignment]
    if host is None:
        raise RuntimeError("BuildContext.host is required to build components")
    entry = host.registries[spec.kind].get(spec.plugin)
    local = attrs.evolve(ctx, section=spec.section, **ctx_changes)
    try:
        return entry.factory(spec.config, local)
    except ClapkitError as exc:
        raise ClapkitError(f"{spec.file or ctx.recipe_file}: {spec.section}: {exc}") from exc
    except ValueError as exc:
        raise ClapkitError(f"{spec.file or ctx.recipe_file}: {spec.section} "
                           f"({spec.kind} '{spec.plugin}'): {exc}") from exc
