"""TOML recipes -> a validated :class:`Recipe`.

Loading order: read the file and its ``extends`` chain (relative paths, deep-merged, the
child wins, cycles are errors), apply ``--set section.key=value`` overrides (TOML value
syntax, bare strings allowed), load the ``plugins = [...]`` modules, then validate every
section against its attrs class and every component table against its plugin's config class.
Each key remembers the file that set it, so errors name the right file even through
``extends``. ``Recipe.to_toml()`` is the fully resolved recipe; loading it gives an equal
``Recipe`` back.

Composition rules (documented in README.md, "Writing a recipe"):

* a child (``extends``) or ``--set`` that changes a component table's ``plugin`` drops the
  parent's options of the old plugin (the section's core keys, e.g. ``data.batch_size`` or
  ``head.view``, are kept); same plugin: options are inherited and overridden key by key;
* a child's ``remove = ["memory", "adapters.variational", "stages.NAME"]`` deletes those
  inherited tables before its own merge in (a name the parents lack is an error);
* ``--set stages.NAME.key=v`` and ``--set stages.INDEX.key=v`` reach one ``[[stages]]`` table;
* relative filesystem paths (``run.out_dir``, ``cache.dir``, ``data.root``, a
  ``backbone.pretrained`` checkpoint path, any plugin option declared with
  :data:`PATH_OPTION`) resolve against the **working directory** when the recipe is loaded, so
  the resolved recipe (``recipe show``, ``RUN_DIR/recipe.toml``) holds absolute paths and means
  the same thing from any folder. ``extends`` alone is relative to the file that names it.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import tomli_w

from .config import field_names, structure, unstructure
from .errors import RecipeError, UnknownComponentError, suggest
from .plugins import PluginHost
from .baselines.config import ProbeConfig
from .sections import (AdapterKeys, CacheConfig, DataKeys, HeadKeys, LossKeys, MemoryConfig,
                       NoKeys, RunConfig, ScenarioConfig, StageConfig)

#: component sections: key -> (kind, core-key class, named table of components?, required?)
COMPONENT_SECTIONS: dict[str, tuple[str, type, bool, bool]] = {
    "data": ("dataset", DataKeys, False, True),
    "backbone": ("backbone", NoKeys, False, True),
    "prompts": ("prompt", NoKeys, True, True),
    "adapters": ("adapter", AdapterKeys, True, False),
    "router": ("router", NoKeys, False, False),
    "head": ("head", HeadKeys, False, False),     # optional: runs without a classifier
    "losses": ("loss", LossKeys, True, True),
    "selector": ("selector", NoKeys, False, False),
    "log": ("logger", NoKeys, True, False),
}
PLAIN_SECTIONS: dict[str, type] = {
    "run": RunConfig, "scenario": ScenarioConfig, "memory": MemoryConfig, "cache": CacheConfig,
    "probe": ProbeConfig,   # options of `clapkit probe` (the linear-probe baseline)
}
TOP_KEYS = ("extends", "remove", "plugins", "stages", *PLAIN_SECTIONS, *COMPONENT_SECTIONS)

#: attrs field metadata of a plugin option that is a filesystem path: relative values resolve
#: against the working directory at load time, e.g. ``root: str = attrs.field(metadata=
#: PATH_OPTION)``. ``MAYBE_PATH_OPTION``: the value is a path only when it looks like one
#: (holds a ``/``, starts with ``.`` or ``~``, or ends in a checkpoint suffix); otherwise it
#: is a name (e.g. an open_clip pretrained tag) and is kept as written.
PATH_OPTION: dict[str, str] = {"clapkit_path": "always"}
MAYBE_PATH_OPTION: dict[str, str] = {"clapkit_path": "maybe"}
#: paths among the core's own keys: (section, field)
CORE_PATH_KEYS = (("run", "out_dir"), ("cache", "dir"))
#: plugin options that are paths by convention, per kind (metadata on a field wins)
CONVENTIONAL_PATHS: dict[str, dict[str, str]] = {
    "dataset": {"root": "always"},
    "backbone": {"pretrained": "maybe", "cache_dir": "always"},
}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


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
    head: ComponentSpec | None
    losses: dict[str, ComponentSpec]
    selector: ComponentSpec | None
    log: dict[str, ComponentSpec]
    probe: ProbeConfig = attrs.field(factory=ProbeConfig)

    def components(self) -> list[ComponentSpec]:
        """Every component spec, in assembly order."""
        out: list[ComponentSpec] = [self.data, self.backbone, *self.prompts.values(),
                                    *self.adapters.values()]
        if self.router:
            out.append(self.router)
        if self.head:
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
        table = parse_toml(path.read_text(encoding="utf-8"), shown)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(shown, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(shown, None, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start}); TOML files are UTF-8") from None
    prov: Provenance = {}
    _stamp(table, (), shown, prov)
    parent = table.pop("extends", None)
    removals = table.pop("remove", None)
    if parent is None:
        if removals is not None:
            raise RecipeError(shown, "remove", "removes inherited tables, but this recipe "
                              "extends none (add extends = \"parent.toml\" or delete the key)")
        return table, prov
    if not isinstance(parent, str):
        raise RecipeError(shown, "extends", "expected a path string")
    base, base_prov = read_raw(path.parent / parent, (*_chain, resolved))
    if removals is not None:
        base = remove_tables(base, base_prov, removals, shown)
    merged = merge_recipe(base, table, base_prov)
    base_prov.update(prov)
    return merged, base_prov


#: how deep arrays and tables may nest in a recipe (the deepest real key, a stage's
#: ``params`` list or a dataset's ``names`` table, is 4 levels down)
MAX_NESTING = 32


def parse_toml(text: str, shown: str, key: str | None = None) -> dict[str, Any]:
    """``tomllib.loads(text)``, refusing values nested deeper than :data:`MAX_NESTING` with
    a one-line :class:`RecipeError` at ``shown`` (``key``) instead of the parser's or the
    validator's RecursionError."""
    try:
        table = tomllib.loads(text)
    except RecursionError:
        table = None
    if table is None or nesting_depth(table) > MAX_NESTING:
        raise RecipeError(shown, key, f"arrays or tables nest deeper than {MAX_NESTING} "
                          "levels; no recipe key takes that")
    return table


def nesting_depth(value: Any) -> int:
    """How many arrays/tables deep ``value`` goes (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:      # deep enough to refuse: no need to look further
                return depth
            todo.extend((v, depth) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _stamp(table: dict[str, Any], prefix: tuple[str, ...], file: str, prov: Provenance) -> None:
    for k, v in table.items():
        prov[(*prefix, k)] = file
        if isinstance(v, dict):
            _stamp(v, (*prefix, k), file, prov)


def removable_tables(table: dict[str, Any]) -> list[str]:
    """What ``remove`` may name in a child of ``table``: a section (``"memory"``,
    ``"selector"``), a named component (``"adapters.variational"``, ``"log.plots"``) or a
    stage (``"stages.balanced_finetune"``)."""
    out: list[str] = []
    for key, value in table.items():
        if key == "stages" and isinstance(value, list):
            out += [f"stages.{s['name']}" for s in value
                    if isinstance(s, dict) and isinstance(s.get("name"), str)]
            continue
        out.append(key)
        if key in COMPONENT_SECTIONS and COMPONENT_SECTIONS[key][2] and isinstance(value, dict):
            out += [f"{key}.{name}" for name, v in value.items() if isinstance(v, dict)]
    return out


def remove_tables(base: dict[str, Any], prov: Provenance, removals: Any,
                  file: str) -> dict[str, Any]:
    """``base`` (the parent chain, merged) without the tables a child's ``remove = [...]``
    names, before the child's own tables merge in: a variant without memory writes
    ``remove = ["memory", "selector", "stages.balanced_finetune"]`` instead of copying
    the chain. A name the parent does not have is an error that lists what it has."""
    if not isinstance(removals, list) or not all(isinstance(r, str) for r in removals):
        raise RecipeError(file, "remove", "expected a list of table names, e.g. "
                          "remove = [\"memory\", \"adapters.variational\"]")
    have = removable_tables(base)
    out = dict(base)
    for name in removals:
        if name not in have:
            raise RecipeError(file, "remove", f"the recipes it extends have no table "
                              f"'{name}' to remove", allowed=have, got=name)
        parts = tuple(name.split("."))
        if parts[0] == "stages":
            out["stages"] = [s for s in out["stages"] if s.get("name") != parts[1]]
            continue
        if len(parts) == 1:
            out.pop(parts[0])
        else:
            section = dict(out[parts[0]])
            section.pop(parts[1])
            out[parts[0]] = section
        for pk in [pk for pk in prov if pk[:len(parts)] == parts]:
            del prov[pk]
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; every other value (arrays included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def component_table_keys(path: tuple[str, ...]) -> type | None:
    """The core-key class when ``path`` names a component table (``("head",)``,
    ``("prompts", "desc")``), else None."""
    if not path or path[0] not in COMPONENT_SECTIONS:
        return None
    _, keys_cls, named, _ = COMPONENT_SECTIONS[path[0]]
    return keys_cls if len(path) == (2 if named else 1) else None


def _drop_plugin_options(table: dict[str, Any], path: tuple[str, ...], keys_cls: type,
                         prov: Provenance, keep: Any = lambda key: False) -> dict[str, Any]:
    """``table`` without the options of its plugin (core keys, ``plugin`` and the keys for
    which ``keep(prov_key)`` holds stay); their provenance goes too."""
    core = set(field_names(keys_cls)) | {"plugin"}
    out = {}
    for k, v in table.items():
        key = (*path, k)
        if k in core or keep(key):
            out[k] = v
            continue
        for pk in [pk for pk in prov if pk[:len(key)] == key]:
            del prov[pk]
    return out


def merge_recipe(base: dict[str, Any], over: dict[str, Any],
                 base_prov: Provenance) -> dict[str, Any]:
    """``deep_merge`` of a child recipe over its parent, except that a component table
    whose ``plugin`` the child changes loses the parent's plugin options (they belong to the
    old plugin: ``[head] plugin = "cosine"`` must not inherit the IEC head's options)."""
    base = dict(base)
    for key in over:
        if key not in COMPONENT_SECTIONS or not isinstance(base.get(key), dict) \
                or not isinstance(over[key], dict):
            continue
        named = COMPONENT_SECTIONS[key][2]
        tables = ([((key, n), over[key][n]) for n in over[key]] if named
                  else [((key,), over[key])])
        section = dict(base[key])
        for path, child in tables:
            parent = section.get(path[-1]) if named else section
            if not (isinstance(parent, dict) and isinstance(child, dict)):
                continue
            if "plugin" in child and parent.get("plugin", child["plugin"]) != child["plugin"]:
                kept = _drop_plugin_options(parent, path, component_table_keys(path),  # type: ignore[arg-type]
                                            base_prov)
                if named:
                    section[path[-1]] = kept
                else:
                    section = kept
        base[key] = section
    return deep_merge(base, over)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value); value in TOML syntax, else a bare string."""
    if "=" not in text:
        raise RecipeError("--set", text, "expected section.key=value")
    key, _, raw = text.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise RecipeError("--set", key, "empty part in dotted key")
    if len(parts) > MAX_NESTING:
        raise RecipeError("--set", key, f"more than {MAX_NESTING} dotted parts")
    try:
        value = parse_toml(f"v = {raw.strip()}", "--set", key.strip())["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def _stage_index(table: dict[str, Any], sel: str, dotted: str) -> int:
    """The index of the stage that ``sel`` (a name or a 0-based index) names."""
    stages = table.get("stages")
    if not isinstance(stages, list) or not stages:
        raise RecipeError("--set", dotted, "the recipe has no [[stages]] to set a key of")
    names = [s.get("name") if isinstance(s, dict) else None for s in stages]
    if sel.isdigit():
        idx = int(sel)
        if idx >= len(stages):
            raise RecipeError("--set", dotted, f"stage index {idx} is out of range (the recipe "
                              f"has {len(stages)} stages: {', '.join(map(str, names))})")
        return idx
    if sel not in names:
        raise RecipeError("--set", dotted, f"no stage named '{sel}'",
                          allowed=[str(n) for n in names] + [str(i) for i in range(len(names))],
                          got=sel)
    return names.index(sel)


def apply_overrides(table: dict[str, Any], prov: Provenance,
                    overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``--set`` overrides in order (see the module docstring for stages and plugin
    swaps); provenance of each key set is ``"--set KEY"`` so errors name the override."""
    for text in overrides:
        parts, value = parse_override(text)
        dotted = ".".join(parts)
        source = f"--set {dotted}"
        if parts[0] == "extends":
            raise RecipeError("--set", "extends", "extends cannot be overridden from the "
                              "command line (it decides which files are read); write a recipe "
                              "that extends the one you want")
        if parts[0] == "stages" and len(parts) > 1:
            if len(parts) < 3:
                raise RecipeError("--set", dotted, "name a key of the stage, e.g. "
                                  f"stages.{parts[1]}.epochs=2")
            idx = _stage_index(table, parts[1], dotted)
            node = table["stages"][idx]
            path: tuple[str, ...] = ("stages", str(idx))
            rest = parts[2:]
        else:
            node, path, rest = table, (), parts
        for p in rest[:-1]:
            path = (*path, p)
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise RecipeError("--set", ".".join(path), "is not a table")
            node = nxt
        keys_cls = component_table_keys(path)
        if keys_cls is not None and rest[-1] == "plugin" and node.get("plugin") not in (
                None, value):
            kept = _drop_plugin_options(node, path, keys_cls, prov,
                                        keep=lambda k: prov.get(k, "").startswith("--set"))
            node.clear()
            node.update(kept)
        node[rest[-1]] = value
        prov[(*path, rest[-1])] = source
        if isinstance(value, dict):
            _stamp(value, (*path, rest[-1]), source, prov)
    return table


# --- paths ----------------------------------------------------------------------------------

def looks_like_path(value: str) -> bool:
    """True for values that name a file rather than a tag (see ``MAYBE_PATH_OPTION``)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value) and not re.match(r"^[A-Za-z]:[\\/]",
                                                                         value):
        return False   # a scheme such as hf-hub: is not a local path (C:\ is)
    return ("/" in value or os.sep in value or value.startswith((".", "~"))
            or value.lower().endswith(_CHECKPOINT_SUFFIXES))


def resolve_path(value: str) -> str:
    """A recipe path made absolute against the working directory (``~`` expanded)."""
    return os.path.abspath(os.path.expanduser(value))


def _resolved_config(config: Any, kind: str) -> Any:
    changes = {}
    usual = CONVENTIONAL_PATHS.get(kind, {})
    for f in attrs.fields(type(config)):
        mode = f.metadata.get("clapkit_path", usual.get(f.name))
        value = getattr(config, f.name)
        if not mode or not isinstance(value, str) or not value:
            continue
        if mode == "always" or (mode == "maybe" and looks_like_path(value)):
            changes[f.name] = resolve_path(value)
    return attrs.evolve(config, **changes) if changes else config


# --- validation ---------------------------------------------------------------------------

def load_recipe(path: str | Path, host: PluginHost,
                overrides: list[str] | tuple[str, ...] = (), *,
                untrusted_dir: Path | None = None) -> Recipe:
    """Read, merge, override and validate a recipe; plugins it names are loaded into host.

    ``untrusted_dir``: the run folder the recipe came from; plugin modules that would be
    imported from inside it are refused (:func:`clapkit.plugins.refuse_untrusted_module`)."""
    table, prov = read_raw(path)
    table = apply_overrides(table, prov, overrides)
    return validate(table, prov, host, str(path), untrusted_dir=untrusted_dir)


def validate(table: dict[str, Any], prov: Provenance, host: PluginHost,
             file: str, untrusted_dir: Path | None = None) -> Recipe:
    def where(*key: str) -> str:
        for n in range(len(key), 0, -1):
            if key[:n] in prov:
                return prov[key[:n]]
        return file

    def where_dotted(dotted: str) -> str:
        return where(*re.findall(r"[^.\[\]]+", dotted))

    for k in table:
        if k not in TOP_KEYS:
            raise RecipeError(where(k), k, "unknown section", allowed=TOP_KEYS, got=k)

    plugins = table.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise RecipeError(where("plugins"), "plugins", "expected a list of module names")
    for mod in plugins:
        host.load_module(mod, source=f"{where('plugins')}: plugins",
                         untrusted_dir=untrusted_dir)

    plain = {k: structure(cls, table.get(k, {}), file=where_dotted, key=k)
             for k, cls in PLAIN_SECTIONS.items()}
    for sec, name in CORE_PATH_KEYS:
        value = getattr(plain[sec], name)
        if value:
            plain[sec] = attrs.evolve(plain[sec], **{name: resolve_path(value)})

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
    _check_stage_losses(stages, comps.get("losses") or {}, where_dotted)
    return Recipe(file=file, plugins=tuple(plugins), stages=stages, **plain, **comps)


def _check_stage_losses(stages: Sequence[StageConfig], losses: dict[str, Any],
                        where_dotted: Callable[[str], str]) -> None:
    """``[[stages]] losses`` names terms the recipe defines."""
    for i, st in enumerate(stages):
        for name in st.losses:
            if name not in losses:
                raise RecipeError(where_dotted(f"stages[{i}]"), f"stages[{i}].losses",
                                  f"stage '{st.name}' names loss '{name}', which the recipe "
                                  "does not define", allowed=sorted(losses), got=name)


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
    config = _resolved_config(structure(entry.config_cls, own_part, file=where_dotted,
                                        key=section), kind)
    return ComponentSpec(section=section, kind=kind, plugin=name, keys=keys, config=config,
                         file=file)
