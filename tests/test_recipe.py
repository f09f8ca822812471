"""Recipe loading: validation errors, extends, overrides, show round-trip."""

from __future__ import annotations

import types

import attrs
import pytest

from clapkit import hookimpl
from clapkit.errors import RecipeError
from clapkit.recipe import PATH_OPTION, load_recipe, read_raw, validate


def test_minimal_recipe_loads_into_typed_configs(minimal_recipe, fake_host):
    r = load_recipe(minimal_recipe, fake_host)
    assert r.run.seed == 3 and r.data.keys.batch_size == 8 and r.data.config.size == 2
    assert r.prompts["desc"].config.tags == ["x", "y"]
    assert r.prompts["soft"].config.mode == "b"
    assert r.adapters["face"].keys.streams == ["face"]
    assert r.head.keys.view == "soft"
    assert r.losses["mi"].keys.weight == 0.5
    assert r.stages[0].train == ["prompts.*"] and r.stages[0].lr == 0.01
    assert r.router is None and r.selector is None


@pytest.mark.parametrize("mutation, key, hint", [
    ("[backbone]\nplugn = 'fake_bb'", "backbone.plugn", "plugin"),
    ("[data]\nplugin = 'fake_data'\nbatch_sise = 3", "data.batch_sise", "batch_size"),
    ("[prompts.desc]\nplugin = 'fake_prompt'\nsise = 3", "prompts.desc.sise", "size"),
    ("[run]\nseeed = 1", "run.seeed", "seed"),
    ("[runn]\nseed = 1", "runn", "run"),
    ("[[stages]]\nname = 'x'\ntrain = []\nepoch = 2", "stages[0].epoch", "epochs"),
])
def test_misspelled_key_names_file_key_and_closest(tmp_path, fake_host, minimal_recipe,
                                                   mutation, key, hint):
    child = tmp_path / "child.toml"
    child.write_text(f'extends = "base.toml"\n{mutation}\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(child, fake_host)
    msg = str(err.value)
    assert "child.toml" in msg and key in msg and f"did you mean '{hint}'" in msg


def test_unknown_plugin_lists_known_names(tmp_path, fake_host, minimal_recipe):
    child = tmp_path / "c.toml"
    child.write_text('extends = "base.toml"\n[head]\nplugin = "fake_heda"\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(child, fake_host)
    msg = str(err.value)
    assert "c.toml" in msg and "head.plugin" in msg and "did you mean 'fake_head'" in msg
    assert "allowed: fake_head" in msg


def test_error_in_base_names_the_base_file(tmp_path, fake_host):
    (tmp_path / "base.toml").write_text("[run]\nseed = 'three'\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[run]\nname = "x"\n')
    with pytest.raises(RecipeError) as err:
        read_and_validate(tmp_path / "child.toml", fake_host)
    assert "base.toml" in str(err.value) and "run.seed" in str(err.value)


def read_and_validate(path, host):
    table, prov = read_raw(path)
    return validate(table, prov, host, str(path))


@pytest.mark.parametrize("text, problem", [
    ("[run]\nseed = 1.5", "expected an integer"),
    ("[run]\nuse_amp = 1", "expected true or false"),
    ("[run]\ngrad_clip = -1.0", "invalid value"),
    ("[run]\namp_dtype = 'int8'", "allowed: auto, bfloat16, float16"),
    ("[data]\nplugin = 'fake_data'\nmode = 'c'", "allowed: a, b"),
])
def test_bad_values_are_errors(tmp_path, fake_host, minimal_recipe, text, problem):
    child = tmp_path / "bad.toml"
    child.write_text(f'extends = "base.toml"\n{text}\n')
    with pytest.raises(RecipeError, match=problem):
        load_recipe(child, fake_host)


def test_extends_chain_merges_tables_and_replaces_arrays(tmp_path, fake_host, minimal_recipe):
    (tmp_path / "mid.toml").write_text('extends = "base.toml"\n[run]\nseed = 7\n'
                                       '[prompts.desc]\ntags = ["z"]\n')
    (tmp_path / "top.toml").write_text('extends = "mid.toml"\n[run]\nname = "top"\n')
    r = load_recipe(tmp_path / "top.toml", fake_host)
    assert (r.run.seed, r.run.name) == (7, "top")
    assert r.prompts["desc"].config.tags == ["z"]
    assert r.prompts["desc"].plugin == "fake_prompt"   # kept from base


def test_extends_cycle_is_an_error(tmp_path, fake_host):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="extends cycle"):
        load_recipe(tmp_path / "a.toml", fake_host)


def test_missing_extends_target_names_the_child(tmp_path, fake_host):
    (tmp_path / "a.toml").write_text('extends = "nope.toml"\n')
    with pytest.raises(RecipeError, match=r"a\.toml.*not found"):
        load_recipe(tmp_path / "a.toml", fake_host)


def test_overrides_apply_last_with_toml_values(minimal_recipe, fake_host):
    r = load_recipe(minimal_recipe, fake_host, ["run.seed=11", "prompts.desc.tags=['q']",
                                                "run.name=bare-string", "run.use_amp=true"])
    assert r.run.seed == 11 and r.prompts["desc"].config.tags == ["q"]
    assert r.run.name == "bare-string" and r.run.use_amp is True


def test_override_typo_is_an_error_naming_set(minimal_recipe, fake_host):
    with pytest.raises(RecipeError, match=r"run\.sed.*did you mean 'seed'"):
        load_recipe(minimal_recipe, fake_host, ["run.sed=1"])


def test_show_round_trips(minimal_recipe, fake_host, tmp_path):
    r = load_recipe(minimal_recipe, fake_host)
    shown = tmp_path / "shown.toml"
    shown.write_text(r.to_toml())
    again = load_recipe(shown, fake_host)
    assert again == r
    assert again.to_toml() == r.to_toml()


def test_recipe_plugin_modules_are_loaded(tmp_path, fake_host, minimal_recipe, monkeypatch):
    mod = tmp_path / "my_recipe_plugin.py"
    mod.write_text(
        "import attrs\nfrom clapkit import hookimpl\n"
        "@attrs.frozen\nclass Cfg:\n    k: int = 1\n"
        "@hookimpl\ndef clapkit_register(registrar):\n"
        "    registrar.add('head', 'local_head', lambda c, x: c, config=Cfg)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    child = tmp_path / "c.toml"
    child.write_text('extends = "base.toml"\nplugins = ["my_recipe_plugin"]\n'
                     '[head]\nplugin = "local_head"\nk = 5\nview = "desc"\n')
    r = load_recipe(child, fake_host)
    assert r.head.plugin == "local_head" and r.head.config.k == 5
    entry = fake_host.registries.head.get("local_head")
    assert entry.provider.startswith("local:")


def test_loss_schedule_warmup_then_linear_ramp(minimal_recipe, fake_host):
    keys = load_recipe(minimal_recipe, fake_host).losses["mi"].keys
    assert [keys.weight_at(e) for e in range(5)] == [0.0, 0.25, 0.5, 0.5, 0.5]


# --- composition: plugin swaps, stages, --set errors, paths ---------------------------------

@attrs.frozen
class OtherHeadConfig:
    temperature: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))


@attrs.frozen
class RootedDataConfig:
    root: str = "data"
    boxes: str = attrs.field(default="", metadata=PATH_OPTION)


@pytest.fixture
def swap_host(fake_host):
    @hookimpl
    def clapkit_register(registrar):
        registrar.add("head", "other_head", lambda c, x: c, config=OtherHeadConfig)
        registrar.add("dataset", "rooted", lambda c, x: c, config=RootedDataConfig)
    fake_host.add_plugin(types.SimpleNamespace(clapkit_register=clapkit_register), "other",
                         "other-dist")
    return fake_host


def _with_head_options(minimal_recipe):
    text = minimal_recipe.read_text()
    minimal_recipe.write_text(text.replace('view = "soft"', 'view = "soft"\nsize = 3\nmode = "b"'))
    return minimal_recipe


def test_child_that_swaps_the_plugin_drops_the_parents_options(tmp_path, swap_host,
                                                                 minimal_recipe):
    _with_head_options(minimal_recipe)
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[head]\nplugin = "other_head"\ntemperature = 0.5\n')
    r = load_recipe(child, swap_host)
    assert r.head.plugin == "other_head" and r.head.config.temperature == 0.5
    assert r.head.keys.view == "soft"          # a core key of [head] is kept


def test_child_that_keeps_the_plugin_inherits_and_overrides(tmp_path, swap_host,
                                                            minimal_recipe):
    _with_head_options(minimal_recipe)
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[head]\nplugin = "fake_head"\nsize = 9\n')
    r = load_recipe(child, swap_host)
    assert (r.head.config.size, r.head.config.mode) == (9, "b")


def test_named_table_swap_in_child(tmp_path, swap_host, minimal_recipe):
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[prompts.desc]\nplugin = "fake_prompt2"\n')
    r = load_recipe(child, swap_host)
    assert r.prompts["desc"].plugin == "fake_prompt2" and r.prompts["desc"].config.tags == []


def test_set_plugin_swap_drops_old_options_but_keeps_other_overrides(tmp_path, swap_host,
                                                                      minimal_recipe):
    base = _with_head_options(minimal_recipe)
    r = load_recipe(base, swap_host, ["head.plugin=other_head"])
    assert r.head.plugin == "other_head" and r.head.config.temperature == 1.0
    r = load_recipe(base, swap_host, ["head.temperature=0.2", "head.plugin=other_head"])
    assert r.head.config.temperature == 0.2


@pytest.mark.parametrize("sel", ["one", "0"])
def test_set_reaches_a_stage_by_name_or_index(minimal_recipe, fake_host, sel):
    r = load_recipe(minimal_recipe, fake_host, [f"stages.{sel}.epochs=7",
                                                f"stages.{sel}.lr=0.5"])
    assert (r.stages[0].epochs, r.stages[0].lr) == (7, 0.5)


@pytest.mark.parametrize("override, pattern", [
    ("stages.two.epochs=1", r"--set stages\.two\.epochs: no stage named 'two'.*allowed: 0, one"),
    ("stages.3.epochs=1", r"--set stages\.3\.epochs: stage index 3 is out of range"),
    ("stages.one.epochs=x", r"^--set stages\.one\.epochs: expected an integer"),
    ("stages.0.lr=-1", r"^--set stages\.0\.lr: invalid value"),
    ("run.grad_clip=-1", r"^--set run\.grad_clip: invalid value"),
    ("data.size=0", r"^--set data\.size: invalid value"),
    ("extends=other.toml", r"^--set extends: extends cannot be overridden"),
])
def test_set_errors_name_the_override(minimal_recipe, fake_host, override, pattern):
    with pytest.raises(RecipeError, match=pattern):
        load_recipe(minimal_recipe, fake_host, [override])


def test_file_error_still_names_the_file(tmp_path, fake_host, minimal_recipe):
    (tmp_path / "r.toml").write_text(minimal_recipe.read_text().replace("seed = 3",
                                                                         "grad_clip = -1.0"))
    with pytest.raises(RecipeError, match=r"r\.toml: run\.grad_clip: invalid value"):
        load_recipe(tmp_path / "r.toml", fake_host)


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch,
                                                             swap_host, minimal_recipe):
    """One rule everywhere: relative to the working directory at load time (not to the
    recipe file, which only anchors ``extends``), written back absolute."""
    sub = tmp_path / "recipes" / "nested"
    sub.mkdir(parents=True)
    (sub / "base.toml").write_text(minimal_recipe.read_text() + '[cache]\ndir = "cachedir"\n')
    (tmp_path / "recipes" / "child.toml").write_text(
        'extends = "nested/base.toml"\n[run]\nout_dir = "out/{name}"\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = load_recipe(tmp_path / "recipes" / "child.toml", swap_host,
                    ["data.plugin=rooted", "data.root=d/x", "data.boxes=b.json"])
    assert r.run.out_dir == str(work / "out" / "{name}")
    assert r.cache.dir == str(work / "cachedir")
    assert r.data.config.root == str(work / "d" / "x")
    assert r.data.config.boxes == str(work / "b.json")       # declared with PATH_OPTION
    # the resolved recipe means the same thing from another folder
    shown = tmp_path / "shown.toml"
    shown.write_text(r.to_toml())
    monkeypatch.chdir(tmp_path)
    assert load_recipe(shown, swap_host) == r


def test_maybe_path_options(tmp_path, monkeypatch):
    from clapkit.recipe import looks_like_path
    assert not looks_like_path("openai") and not looks_like_path("laion2b_s34b_b79k")
    assert not looks_like_path("hf-hub:org/model")
    assert looks_like_path("weights/clip.pt") and looks_like_path("clip.safetensors")
    assert looks_like_path("./x") and looks_like_path("~/x")
