"""TOML recipes -> a validated :class:`Recipe`.

Loading order: read the file and its ``extends`` chain (relative paths, deep-merged, the
child wins, cycles are errors), apply ``--set section.key=value`` overrides (TOML value
syntax, bare strings allowed), load the ``plugins = [...]`` modules, then validate every
section against its attrs class and every component table against its plugin's config class.
Each key remembers the file that set it, so errors name the right file even through
``extends``. ``Recipe.to_toml()`` is the fully resolved recipe; loading it gives an equal
``Recipe`` back.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from .config import field_names, structure, unstructure
from .errors import RecipeError, UnknownComponentError, suggest
from .plugins import PluginHost
from .sections import (AdapterKeys, CacheConfig, DataKeys, HeadKeys, LossKeys, MemoryConfig,
                       NoKeys, RunConfig, ScenarioConfig, StageConfig)

#: component sections: key -> (kind, core-key class, named table of components?, required?)
COMPONENT_SECTIONS: dict[str, tuple[str, type, bool, bool]] = {
    "data": ("dataset", DataKeys, False, True),
    "backbone": ("backbone", NoKeys, False, True),
    "prompts": ("prompt", NoKeys, True, True),
    "adapters": ("adapter", AdapterKeys, True, False),
    "router": ("router", NoKeys, False, False),
    "head": ("head", HeadKeys, False, True),
    "losses": ("loss", LossKeys, True, True),
    "selector": ("selector", NoKeys, False, False),
    "log": ("logger", NoKeys, True, False),
}
PLAIN_SECTIONS: dict[str, type] = {
    "run": RunConfig, "scenario": ScenarioConfig, "memory": MemoryConfig, "cache": CacheConfig,
}
TOP_KEYS = ("extends", "plugins", "stages", *PLAIN_SECTIONS, *COMPONENT_SECTIONS)


@attrs.frozen
class ComponentSpec:
    """One component of a recipe: ``section`` is its dotted key (``adapters.eaa``)."""

    section: str
    kind: str
    plugin: str
    keys: Any      # the section's core keys (a ``*Keys`` instance)
    config: Any    # the plugin's attrs config
    file: str | None = attrs.field(default=None, eq=False)

    @property
    def name(self) -> str:
        return self.section.split(".", 1)[-1]

    def to_table(self) -> dict[str, Any]:
        return {"plugin": self.plugin, **unstructure(self.keys), **unstructure(self.config)}


@attrs.frozen
class Recipe:
    file: str | None = attrs.field(eq=False)
    plugins: tuple[str, ...]
    run: RunConfig
    scenario: ScenarioConfig
    memory: MemoryConfig
    cache: CacheConfig
    stages: tuple[StageConfig, ...]
    data: ComponentSpec
    backbone: ComponentSpec
    prompts: dict[str, ComponentSpec]
    adapters: dict[str, ComponentSpec]
    router: ComponentSpec | None
    head: ComponentSpec
    losses: dict[str, ComponentSpec]
    selector: ComponentSpec | None
    log: dict[str, ComponentSpec]

    def components(self) -> list[ComponentSpec]:
        """Every component spec, in assembly order."""
        out: list[ComponentSpec] = [self.data, self.backbone, *self.prompts.values(),
                                    *self.adapters.values()]
        if self.router:
            out.append(self.router)
        out.append(self.head)
        out += list(self.losses.values())
        if self.selector:
            out.append(self.selector)
        return out + list(self.log.values())

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.plugins:
            doc["plugins"] = list(self.plugins)
        for key in PLAIN_SECTIONS:
            doc[key] = unstructure(getattr(self, key))
        doc["stages"] = [unstructure(s) for s in self.stages]
        for key, (_, _, named, _) in COMPONENT_SECTIONS.items():
            value = getattr(self, key)
            if value is None:
                continue
            doc[key] = ({n: s.to_table() for n, s in value.items()} if named
                        else value.to_table())
        return doc

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# --- reading, extends, overrides ----------------------------------------------------------

Provenance = dict[tuple[str, ...], str]


def read_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any],
                                                                       Provenance]:
    """The merged table of ``path`` and its ``extends`` chain, with key provenance."""
    path = Path(path)
    shown = str(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise RecipeError(shown, "extends", f"extends cycle: {cycle}")
    if not path.is_file():
        where = str(_chain[-1]) if _chain else None
        raise RecipeError(where or shown, "extends" if where else None,
                          f"recipe file not found: {path}")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(shown, None, f"not valid TOML: {exc}") from None
    prov: Provenance = {}
    _stamp(table, (), shown, prov)
    parent = table.pop("extends", None)
    if parent is None:
        return table, prov
    if not isinstance(parent, str):
        raise RecipeError(shown, "extends", "expected a path string")
    base, base_prov = read_raw(path.parent / parent, (*_chain, resolved))
    base_prov.update(prov)
    return deep_merge(base, table), base_prov


def _stamp(table: dict[str, Any], prefix: tuple[str, ...], file: str, prov: Provenance) -> None:
    for k, v in table.items():
        prov[(*prefix, k)] = file
        if isinstance(v, dict):
            _stamp(v, (*prefix, k), file, prov)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; every other value (arrays included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value); value in TOML syntax, else a bare string."""
    if "=" not in text:
        raise RecipeError("--set", text, "expected section.key=value")
    key, _, raw = text.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise RecipeError("--set", key, "empty part in dotted key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def apply_overrides(table: dict[str, Any], prov: Provenance,
                    overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = table
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise RecipeError("--set", ".".join(parts[: i + 1]), "is not a table")
            node = nxt
        node[parts[-1]] = value
        prov[tuple(parts)] = "--set"
    return table


# --- validation ---------------------------------------------------------------------------

def load_recipe(path: str | Path, host: PluginHost,
                overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, merge, override and validate a recipe; plugins it names are loaded into host."""
    table, prov = read_raw(path)
    table = apply_overrides(table, prov, overrides)
    return validate(table, prov, host, str(path))


def validate(table: dict[str, Any], prov: Provenance, host: PluginHost,
             file: str) -> Recipe:
    def where(*key: str) -> str:
        for n in range(len(key), 0, -1):
            if key[:n] in prov:
                return prov[key[:n]]
        return file

    def where_dotted(dotted: str) -> str:
        return where(*[p for p in re.split(r"\.|\[\d+\]", dotted) if p])

    for k in table:
        if k not in TOP_KEYS:
            raise RecipeError(where(k), k, "unknown section", allowed=TOP_KEYS, got=k)

    plugins = table.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise RecipeError(where("plugins"), "plugins", "expected a list of module names")
    for mod in plugins:
        host.load_module(mod, source=f"{where('plugins')}: plugins")

    plain = {k: structure(cls, table.get(k, {}), file=where_dotted, key=k)
             for k, cls in PLAIN_SECTIONS.items()}

    stages_raw = table.get("stages", [])
    if not isinstance(stages_raw, list):
        raise RecipeError(where("stages"), "stages", "expected an array of tables [[stages]]")
    stages = tuple(structure(StageConfig, s, file=where_dotted, key=f"stages[{i}]")
                   for i, s in enumerate(stages_raw))

    comps: dict[str, Any] = {}
    missing: list[str] = []
    for key, (kind, keys_cls, named, required) in COMPONENT_SECTIONS.items():
        raw = table.get(key)
        if raw is None:
            if required:
                missing.append(key)
            comps[key] = {} if named else None
            continue
        if not isinstance(raw, dict):
            raise RecipeError(where(key), key, "expected a table")
        if named:
            bad = [n for n, v in raw.items() if not isinstance(v, dict)]
            if bad:
                raise RecipeError(where(key, bad[0]), f"{key}.{bad[0]}",
                                  f"expected a table [{key}.{bad[0]}] with plugin = \"...\"")
            comps[key] = {n: _component(f"{key}.{n}", kind, keys_cls, v, where(key, n),
                                        where, where_dotted, host)
                          for n, v in raw.items()}
            if required and not comps[key]:
                raise RecipeError(where(key), key, f"needs at least one [{key}.NAME] table")
        else:
            comps[key] = _component(key, kind, keys_cls, raw, where(key), where, where_dotted,
                                    host)
    if missing:  # after the present sections, so a typo is reported before its consequence
        raise RecipeError(file, missing[0], f"required section [{missing[0]}] is missing")
    return Recipe(file=file, plugins=tuple(plugins), stages=stages, **plain, **comps)


def _component(section: str, kind: str, keys_cls: type, raw: dict[str, Any], file: str,
               where: Any, where_dotted: Any, host: PluginHost) -> ComponentSpec:
    registry = host.registries[kind]
    path = tuple(section.split("."))
    core = field_names(keys_cls)
    if "plugin" not in raw:
        typo = next((k for k in raw if suggest(k, ["plugin"])), None)
        if typo is not None:
            raise RecipeError(where(*path, typo), f"{section}.{typo}", "unknown key",
                              allowed=["plugin", *core], got=typo)
        raise RecipeError(file, f"{section}.plugin", f"required key is missing (a {kind} name)",
                          allowed=registry.names())
    name = raw["plugin"]
    try:
        entry = registry.get(name)
    except UnknownComponentError as exc:
        raise RecipeError(where(*path, "plugin"), f"{section}.plugin",
                          f"unknown {kind} plugin '{name}'"
                          + (f" ({'; '.join(registry.broken)})" if registry.broken else ""),
                          allowed=exc.known, got=str(name)) from None
    own = field_names(entry.config_cls)
    core_part, own_part = {}, {}
    for k, v in raw.items():
        if k == "plugin":
            continue
        if k in core:
            core_part[k] = v
        elif k in own:
            own_part[k] = v
        else:
            raise RecipeError(where(*path, k), f"{section}.{k}",
                              f"unknown key for {kind} plugin '{name}'",
                              allowed=["plugin", *core, *own], got=k)
    keys = structure(keys_cls, core_part, file=where_dotted, key=section)
    config = structure(entry.config_cls, own_part, file=where_dotted, key=section)
    return ComponentSpec(section=section, kind=kind, plugin=name, keys=keys, config=config,
                         file=file)
