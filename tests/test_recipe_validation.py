"""Every recipe value is validated: out-of-range, non-finite and wrong-typed values of every
core field give one-line errors naming the dotted key (exit 2 from the CLI, no traceback)."""

from __future__ import annotations

import copy
import logging
import math
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import pytest
import tomli_w

from clapkit import validators as v
from clapkit.cli import main
from clapkit.errors import RecipeError
from clapkit.recipe import PLAIN_SECTIONS, load_recipe
from clapkit.sections import AdapterKeys, DataKeys, HeadKeys, LossKeys, StageConfig

REPO = Path(__file__).resolve().parents[1]


def _minimal_recipe() -> str:
    """tests/conftest.py's MINIMAL_RECIPE (imported by path: ``conftest`` is ambiguous when
    the whole suite runs, tests/data has one too)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_tests_root_conftest",
                                                  Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MINIMAL_RECIPE


MINIMAL_RECIPE = _minimal_recipe()

#: where each core-key class sits in MINIMAL_RECIPE
LOCATIONS: list[tuple[tuple[Any, ...], type]] = [
    *[((name,), cls) for name, cls in PLAIN_SECTIONS.items()],
    (("stages", 0), StageConfig),
    (("data",), DataKeys),
    (("adapters", "face"), AdapterKeys),
    (("head",), HeadKeys),
    (("losses", "ce"), LossKeys),
]


def _base_types(tp: Any) -> list[Any]:
    if get_origin(tp) in (Union, getattr(__import__("types"), "UnionType")):
        return [a for a in get_args(tp) if a is not type(None)]
    return [tp]


def _wrong_typed(tp: Any) -> list[Any]:
    """Values of a clearly wrong type for annotation ``tp``."""
    base = _base_types(tp)
    origins = {get_origin(b) or b for b in base}
    out: list[Any] = []
    if not origins & {str, Literal}:
        out.append("x")
    if not origins & {int, float}:
        out.append(7)
    if origins & {int, float, str, bool, Literal}:
        out.append([1])
    if origins & {list, dict}:
        out.append(True if list in origins else [1])
    if int in origins and float not in origins:
        out.append(1.5)
    return out


def _out_of_range(rng: v.Range, integer: bool) -> list[Any]:
    out = []
    if rng.lo is not None:
        out.append(rng.lo if rng.lo_open else (rng.lo - 1 if integer else rng.lo - 0.5))
    if rng.hi is not None:
        out.append(rng.hi if rng.hi_open else (rng.hi + 1 if integer else rng.hi + 0.5))
    return out


def _element_type(tp: Any) -> Any:
    base = _base_types(tp)[0]
    if get_origin(base) is list:
        return get_args(base)[0]
    if get_origin(base) is dict:
        return get_args(base)[1]
    return base


def _cases() -> list[tuple[str, tuple[Any, ...], Any]]:
    cases = []
    for loc, cls in LOCATIONS:
        hints = typing.get_type_hints(cls)
        for f in attrs.fields(cls):
            tp = hints[f.name]
            dotted = ".".join(str(p) for p in loc) + "." + f.name
            path = (*loc, f.name)
            for bad in _wrong_typed(tp):
                cases.append((f"{dotted}={bad!r}", path, bad))
            elem = _element_type(tp)
            container = get_origin(_base_types(tp)[0]) in (list, dict)
            wrap = (lambda x: {"k": x} if get_origin(_base_types(tp)[0]) is dict else [x]) \
                if container else (lambda x: x)
            if elem in (int, float):
                ranges = v.ranges_of(f.validator)
                if not ranges:
                    UNBOUNDED.append(dotted)
                for r in ranges:
                    for bad in _out_of_range(r, elem is int):
                        cases.append((f"{dotted}={bad!r}", path, wrap(bad)))
                for bad in (math.nan, math.inf, -math.inf):
                    cases.append((f"{dotted}={bad!r}", path, wrap(bad)))
    return cases


UNBOUNDED: list[str] = []
CASES = _cases()


def test_every_numeric_key_has_a_range_validator():
    assert UNBOUNDED == [], f"numeric recipe keys without a range validator: {UNBOUNDED}"


def _set(table: dict, path: tuple[Any, ...], value: Any) -> None:
    node = table
    for p in path[:-1]:
        node = node.setdefault(p, {}) if isinstance(node, dict) else node[p]
    node[path[-1]] = value


@pytest.mark.parametrize("label,path,value", CASES, ids=[c[0] for c in CASES])
def test_every_field_rejects_bad_values_with_one_line(tmp_path, fake_host, label, path, value):
    table = tomllib.loads(MINIMAL_RECIPE)
    table = copy.deepcopy(table)
    _set(table, path, value)
    f = tmp_path / "r.toml"
    f.write_text(tomli_w.dumps(table))
    with pytest.raises(RecipeError) as err:
        load_recipe(f, fake_host)
    msg = str(err.value)
    assert "\n" not in msg
    key = ".".join(str(p) for p in path).replace("stages.0", "stages[0]")
    assert key.rsplit(".", 1)[0] in msg and path[-1] in msg, msg


def test_the_base_recipe_is_valid(tmp_path, fake_host):
    f = tmp_path / "r.toml"
    f.write_text(MINIMAL_RECIPE)
    load_recipe(f, fake_host)


def test_num_workers_is_clamped_to_the_machine(tmp_path, fake_host, caplog):
    from clapkit.sections import available_cpus
    f = tmp_path / "r.toml"
    f.write_text(MINIMAL_RECIPE.replace("batch_size = 8", "batch_size = 8\nnum_workers = 100000"))
    with caplog.at_level(logging.WARNING):
        rec = load_recipe(f, fake_host)
    assert rec.data.keys.num_workers == available_cpus()
    assert "num_workers" in caplog.text


def test_names_are_names(tmp_path, fake_host):
    for bad in ("../x", "a/b", "/abs", "..", "a\\b", ""):
        f = tmp_path / "r.toml"
        f.write_text(MINIMAL_RECIPE.replace('name = "t"', f'name = {bad!r}'.replace("\\", "\\\\")))
        with pytest.raises(RecipeError, match=r"run\.name.*plain name"):
            load_recipe(f, fake_host)


# --- the fuzz findings, through the CLI (exit 2, one line, no traceback) ----------

DEMO = REPO / "recipes" / "demo_caer_staged.toml"


def _demo_variant(tmp_path: Path, change: Any) -> Path:
    """A standalone copy of the demo recipe (its extends chain merged) with ``change``."""
    from clapkit.recipe import read_raw
    table, _ = read_raw(DEMO)
    change(table)
    out = tmp_path / "variant.toml"
    out.write_text(tomli_w.dumps(table))
    return out


def _stage(key: str, value: Any):
    def change(t):
        t["stages"][0][key] = value
    return change


def _section(section: str, key: str, value: Any):
    def change(t):
        t.setdefault(section, {})[key] = value
    return change


def _loss(value: Any):
    def change(t):
        name = next(iter(t["losses"]))
        t["losses"][name]["weight"] = value
    return change


FUZZ = {
    "lr inf": _stage("lr", math.inf),
    "lr negative": _stage("lr", -1.0),
    "loss weight nan": _loss(math.nan),
    "loss weight -1": _loss(-1.0),
    "mixup_alpha inf": _section("run", "mixup_alpha", math.inf),
    "negative lr_groups": _stage("lr_groups", {"*": -1e-3}),
    "negative gamma": lambda t: t["stages"][0].update(scheduler="multistep", gamma=-0.1,
                                                       milestones=[1]),
    "negative milestones": lambda t: t["stages"][0].update(scheduler="multistep",
                                                            milestones=[-1]),
    "eval_batch_size 0": _section("data", "eval_batch_size", 0),
    "warmup_epochs inf": _stage("warmup_epochs", math.inf),
    "seed negative": _section("run", "seed", -1),
    "seed too large for the mixup seed": _section("run", "seed", 2**62),
    "train empty": _stage("train", []),
    "device tpu": _section("run", "device", "tpu"),
    "run.name with ..": _section("run", "name", "../escape"),
}


@pytest.mark.parametrize("case", list(FUZZ))
def test_fuzz_findings_exit_2_with_one_line(tmp_path, capsys, case):
    path = _demo_variant(tmp_path, FUZZ[case])
    with pytest.raises(SystemExit) as ex:
        main(["recipe", "check", str(path)])
    err = capsys.readouterr().err
    assert ex.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("junk", [b"\xff\xfe\x00garbage\x80", "[run]\nname = \"caf\xe9\"\n".encode("latin-1")])
def test_non_utf8_recipe_is_one_line(tmp_path, capsys, junk):
    path = tmp_path / "junk.toml"
    path.write_bytes(junk)
    with pytest.raises(SystemExit) as ex:
        main(["recipe", "check", str(path)])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and len(err.strip().splitlines()) == 1 and "UTF-8" in err, err


def test_plugin_options_refuse_non_finite_numbers_too():
    """The float conversion itself refuses nan/inf, for every plugin's options (a field
    opts out explicitly with metadata allow_nonfinite)."""
    from clapkit.config import structure

    @attrs.frozen
    class Opts:
        scale: float = 1.0
        limit: float = attrs.field(default=math.inf, metadata={"allow_nonfinite": True})
        table: dict[str, float] = attrs.field(factory=dict)

    for bad in ({"scale": math.nan}, {"scale": -math.inf}, {"table": {"a": math.inf}}):
        with pytest.raises(RecipeError, match="finite"):
            structure(Opts, bad, file="r.toml", key="losses.x")
    assert structure(Opts, {"limit": math.inf}, file="r.toml", key="losses.x").limit == math.inf
