"""One assembly of a run's parts, used by every command that builds a pipeline.

``clapkit run`` (the :class:`~clapkit.engine.trainer.Trainer`), ``clapkit eval`` / ``probe`` /
``predict`` (:func:`clapkit.evaluation.prepare`) and ``clapkit recipe check`` all call
:func:`assemble`, so a recipe that ``run`` refuses before its first step is refused by
``recipe check`` with the same one-line message (the two used to assemble a run each their own
way, and disagreed). The order is the run's: recipe rules -> dataset -> backbone -> scenario ->
data context -> pipeline -> selector. The data comes before the backbone, so a missing dataset
is reported before any weights are downloaded.

``recipe check`` passes its own :data:`PartBuilder` (stand-ins for data and weights that are
not on this machine); everything else builds the recipe's components as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from ..build import build_component
from ..data.base import require_items_per_class
from ..errors import ClapkitError, RecipeError
from ..interfaces import BuildContext
from ..pipeline import Pipeline, build_pipeline
from ..plugins import PluginHost
from ..recipe import ComponentSpec, Recipe
from .best import CLASSIFICATION_METRICS
from .data import check_splits
from .scenario import Scenario, make_scenario
from .stages import check_stage

#: ``builder(spec, ctx, what) -> (component, stand_in)``: how the data and the backbone are
#: built (``what`` names the part for messages; ``stand_in`` says it is not the recipe's own)
PartBuilder = Callable[[ComponentSpec, BuildContext, str], tuple[Any, bool]]


def build_as_recipe(spec: ComponentSpec, ctx: BuildContext, what: str) -> tuple[Any, bool]:
    """The default :data:`PartBuilder`: the recipe's component itself."""
    return build_component(spec, ctx), False


class PipelineBuildError(ClapkitError):
    """Composing the pipeline failed (prompt views, head view, adapter places, loss needs):
    its own type so ``recipe check`` can say when a stand-in backbone may be the cause."""


@attrs.define
class Assembly:
    """A run's parts, built and checked (see :func:`assemble`)."""

    recipe: Recipe          # ``need_split`` may have set ``data.test_split``
    ctx: BuildContext       # class names, counts, streams: what factories read
    source: Any             # the dataset source
    backbone: Any
    scenario: Scenario
    pipeline: Pipeline
    selector: Any | None
    notes: list[str] = attrs.field(factory=list)   # what stood in for what (recipe check)
    stand_in_data: bool = False


def check_recipe_rules(recipe: Recipe) -> None:
    """The rules a recipe must keep whatever its data: unique stage names, valid stages that
    each run in some task, memory and selector that make sense together."""
    r, f = recipe, recipe.file
    names = [s.name for s in r.stages]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise RecipeError(f, "stages", f"two stages are named '{dup}'")
    for i, s in enumerate(r.stages):
        check_stage(s, file=f, key=f"stages[{i}]")
        if (s.data == "memory" or s.after_memory) and r.memory.size == 0:
            what = "data = \"memory\"" if s.data == "memory" else "after_memory = true"
            raise RecipeError(f, f"stages[{i}].{'data' if s.data == 'memory' else 'after_memory'}",
                              f"stage '{s.name}': {what} needs a replay memory "
                              "(memory.size > 0)")
        if s.split and s.data != "task" and r.memory.size > 0:
            raise RecipeError(f, f"stages[{i}].data",
                              f"stage '{s.name}' trains on its own split '{s.split}', so it "
                              "cannot mix in the replay memory (train-split items): set "
                              "data = \"task\"", allowed=["task"], got=s.data)
    if r.memory.size > 0 and r.selector is None:
        raise RecipeError(f, "selector", "memory.size > 0 needs a [selector] that picks "
                          "the exemplars (e.g. plugin = \"random\" or \"herding\")")
    if r.selector is not None and r.memory.size == 0:
        raise RecipeError(f, "memory.size", "a [selector] is set but memory.size = 0, so "
                          "it would never be used; set a memory size or drop [selector]")
    check_stages_run(r)
    if r.head is None and r.run.select in CLASSIFICATION_METRICS:
        raise RecipeError(f, "run.select", f"'{r.run.select}' is a classification metric but "
                          "the recipe has no [head], so nothing computes it; select a metric "
                          "an evaluation plugin produces, or \"last\" (no selection)",
                          allowed=["auto", "last", "<a plugin's metric>"], got=r.run.select)


def check_stages_run(recipe: Recipe) -> None:
    """Every stage runs in at least one task of the scenario (the number of tasks is the
    recipe's: one per ``scenario.task_to_cls_num`` entry, else one)."""
    sizes = recipe.scenario.task_to_cls_num
    num_tasks = len(sizes) if sizes else 1
    for i, s in enumerate(recipe.stages):
        if not any(s.runs_in(t) for t in range(num_tasks)):
            raise RecipeError(recipe.file, f"stages[{i}].tasks",
                              f"stage '{s.name}' runs in no task: tasks = \"{s.tasks}\" "
                              f"but the scenario has {num_tasks} task(s) (0-based)")


def fill_data_context(ctx: BuildContext, recipe: Recipe, source: Any, scenario: Scenario
                      ) -> None:
    """What the components' factories read from the data: class names in class order, train
    class counts, the class -> task map, streams and frames, the training captions."""
    train = recipe.data.keys.train_split
    counts = source.class_counts(train) if train in source.splits() else None
    ctx.class_names = [source.classes[o] for o in scenario.order]
    ctx.class_counts = [counts[o] for o in scenario.order] if counts else None
    ctx.task_of_class = scenario.task_of_class
    ctx.streams = tuple(source.streams)
    ctx.num_frames = source.num_frames
    refs = source.refs(train) if train in source.splits() else []
    ctx.train_texts = [t for r in refs for t in r.texts]


def replay_growth(pipeline: Pipeline, scenario: Scenario, task: int) -> None:
    """``pipeline.on_task_start`` for tasks ``0..task``: the per-task modules a run grew
    exist again before its weights are loaded (growth happens only there)."""
    for k in range(task + 1):
        pipeline.on_task_start(k, scenario.seen(k))


def _with_test_split(recipe: Recipe, source: Any) -> Recipe:
    """``recipe`` with ``data.test_split = "test"`` when it names none and the dataset has a
    split of that name; an error saying how to name one otherwise."""
    if recipe.data.keys.test_split is not None:
        return recipe
    if "test" not in source.splits():
        raise ClapkitError(f"{recipe.file}: data.test_split: the recipe names no test "
                           f"split and the dataset has none called 'test' (splits: "
                           f"{', '.join(source.splits())}); pass --set data.test_split=NAME")
    return attrs.evolve(recipe, data=attrs.evolve(
        recipe.data, keys=attrs.evolve(recipe.data.keys, test_split="test")))


def _source_hint(recipe: Recipe, exc: ClapkitError) -> ClapkitError:
    """``exc``, plus how to run the ``demo_<recipe>.toml`` beside the recipe when one exists."""
    f = Path(recipe.data.file or recipe.file or "")
    demo = f.with_name(f"demo_{f.name}")
    if f.name and not f.name.startswith("demo_") and demo.is_file():
        return ClapkitError(f"{exc} -- to try this recipe's pipeline on generated data "
                            f"instead, run: clapkit run {demo}")
    return exc


def assemble(recipe: Recipe, host: PluginHost, *, device: torch.device, work_dir: Path,
             builder: PartBuilder = build_as_recipe, need_split: str | None = None,
             check_rules: bool = True) -> Assembly:
    """Build and check every part of ``recipe`` as a run does before its first step.

    ``need_split = "test"``: the recipe's data keys must name a test split (the dataset's
    ``test`` split is used when the recipe names none). ``check_rules = False`` skips
    :func:`check_recipe_rules` for a caller that ran it already (the trainer does, before it
    claims its output folder).
    """
    if check_rules:
        check_recipe_rules(recipe)
    ctx = BuildContext(host=host, recipe_file=recipe.file, work_dir=work_dir, device=device,
                       seed=recipe.run.seed)
    notes: list[str] = []
    try:
        source, stand_in_data = builder(recipe.data, ctx, "the data")
    except ClapkitError as exc:
        raise _source_hint(recipe, exc) from exc
    if need_split == "test":
        recipe = _with_test_split(recipe, source)
    if not stand_in_data:
        check_splits(source, recipe)
        try:
            require_items_per_class(source, recipe.data.keys.train_split)
        except ClapkitError as exc:
            raise ClapkitError(f"{recipe.data.file or recipe.file}: data: {exc}") from exc
    backbone, _ = builder(recipe.backbone, ctx, "the backbone weights")
    ctx.backbone = backbone
    scenario_cfg = recipe.scenario
    if stand_in_data and scenario_cfg.task_to_cls_num:
        notes.append("scenario.task_to_cls_num: not checked against the stand-in "
                     "data's classes")
        scenario_cfg = attrs.evolve(scenario_cfg, task_to_cls_num=None)
    scenario = make_scenario(scenario_cfg, len(source.classes), file=recipe.file)
    fill_data_context(ctx, recipe, source, scenario)
    try:
        pipeline = build_pipeline(recipe, ctx, backbone)
    except PipelineBuildError:
        raise
    except ClapkitError as exc:
        raise PipelineBuildError(str(exc)) from exc
    selector = build_component(recipe.selector, ctx) if recipe.selector else None
    return Assembly(recipe=recipe, ctx=ctx, source=source, backbone=backbone,
                    scenario=scenario, pipeline=pipeline, selector=selector, notes=notes,
                    stand_in_data=stand_in_data)
