"""``clapkit eval``: evaluate a run's checkpoint, or a recipe's pipeline as built.

A *run folder* target (it holds ``recipe.toml``) is rebuilt from its resolved recipe, the
components replay their per-task growth up to the checkpoint's task and the checkpoint's
weights are loaded; the result goes to ``RUN_DIR/eval-<checkpoint>-<split>.json``. A *recipe
file* target is evaluated as built, i.e. zero-shot when nothing in it is trained; the result
goes to ``OUT/eval.json`` (``OUT`` defaults to ``run.out_dir`` with ``{name}`` =
``<name>-eval``).

Figures are fractions in [0, 1] like every metric in ``summary.json`` and ``metrics.jsonl``:
``top1`` (= ``war``, the accuracy), ``top5`` (``None`` with fewer than 5 classes), ``war``,
``uar`` (mean per-class recall), ``per_class`` (recall per class name, ``None`` for a class
without items), ``confusion`` (rows = true class, columns = predicted, in ``classes`` order).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from .atomic import atomic_write_json
from .errors import ClapkitError
from .metrics import confusion_matrix, per_class_accuracy, uar, war
from .pipeline import Pipeline
from .plugins import PluginHost
from .recipe import Recipe, load_recipe

SPLITS = ("valid", "test")
CHECKPOINTS = ("best", "last")


@attrs.define
class Prepared:
    """A pipeline ready to evaluate, with its data and scenario (see :func:`prepare`)."""

    recipe: Recipe
    pipeline: Pipeline
    data: Any            # engine.data.RunData
    source: Any          # the dataset source
    scenario: Any        # engine.scenario.Scenario
    device: torch.device
    class_names: list[str]
    task: int            # the last task the weights have seen
    checkpoint: str      # "best" | "last" | "none"
    position: dict[str, Any] | None = None
    backbone_trained: bool = False
    ctx: Any = None      # the BuildContext the pipeline was built with (loggers use it)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "recipe.toml").is_file()


def default_checkpoint(run_dir: Path) -> str:
    """The model the run's summary reports: ``best`` when the run selected one
    (``run.select``), else ``last`` (incremental runs select nothing by default)."""
    return "best" if (run_dir / "checkpoints" / "best.pt").is_file() else "last"


def run_recipe_file(run_dir: Path) -> Path:
    if not is_run_dir(run_dir):
        raise ClapkitError(f"{run_dir} is not a run folder (it has no recipe.toml; a run "
                           "folder is what `clapkit run` writes, e.g. runs/<name>)")
    return run_dir / "recipe.toml"


def load_run_recipe(run_dir: Path, host: PluginHost,
                    overrides: tuple[str, ...] | list[str] = (), *,
                    trust_code: bool = False) -> Recipe:
    """The resolved recipe of the run folder ``run_dir``. Its ``plugins = [...]`` modules
    are code: one that would be imported from the run folder itself (a ``.py`` shipped
    with a downloaded run) is refused unless ``trust_code`` (``--trust-run-code``), which
    also puts the folder on ``sys.path`` so the shipped modules import."""
    file = run_recipe_file(run_dir)
    if not trust_code:
        return load_recipe(file, host, overrides, untrusted_dir=run_dir)
    folder = str(run_dir.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return load_recipe(file, host, overrides)


def prepare(recipe: Recipe, host: PluginHost, *, checkpoint: Path | None = None,
            checkpoint_name: str = "none", work_dir: Path | None = None,
            need_split: str | None = None) -> Prepared:
    """Build data, scenario and pipeline as the trainer does, then load ``checkpoint``.

    ``need_split`` (``"test"``) makes sure the recipe's data keys name that split: when the
    recipe sets no ``data.test_split`` but the dataset has a ``test`` split, it is used.
    """
    from .engine.assembly import assemble, replay_growth
    from .engine.data import RunData
    from .engine.distributed import DistInfo
    from .engine.setup import resolve_device, seed_everything

    seed_everything(recipe.run.seed, False)
    device = resolve_device(recipe.run.device, 0)
    parts = assemble(recipe, host, device=device, work_dir=work_dir or Path("."),
                     need_split=need_split)         # the same assembly as run and check
    recipe, sc, pipeline = parts.recipe, parts.scenario, parts.pipeline
    data = RunData(parts.source, recipe, parts.backbone, DistInfo(), recipe.run.seed, device)
    task = sc.num_tasks - 1
    position = None
    trained_backbone = False
    if checkpoint is not None:
        from .engine import checkpoint as ckpt
        state = ckpt.load(checkpoint)
        task = ckpt.checkpoint_task(state, sc.num_tasks, str(checkpoint))
        position = dict(state.get("position") or {})
        trained_backbone = bool(state.get("backbone_trained", False))
        replay_growth(pipeline, sc, task)
        ckpt.load_model_state(pipeline, state.get("model"), where=str(checkpoint))
    else:
        replay_growth(pipeline, sc, task)
    pipeline.to(device)
    return Prepared(recipe=recipe, pipeline=pipeline, data=data, source=parts.source, scenario=sc,
                    device=device, class_names=list(parts.ctx.class_names), task=task,
                    checkpoint=checkpoint_name, position=position,
                    backbone_trained=trained_backbone, ctx=parts.ctx)


def _step_config(prep: Prepared, desc: str) -> Any:
    from .engine.loop import StepConfig, amp_policy
    r, sc = prep.recipe, prep.scenario
    return StepConfig(device=prep.device, remap=sc.remap_table(),
                      task_of_class=torch.as_tensor(sc.task_of_class, dtype=torch.long),
                      num_classes=sc.num_classes,
                      seen=sc.seen(prep.task) if sc.incremental else None,
                      amp=amp_policy(r.run.use_amp, r.run.amp_dtype, prep.device),
                      progress=r.run.progress, desc=desc, task=prep.task,
                      num_samples=r.run.num_samples, eval_seed=r.run.seed)


def use_cache(prep: Prepared) -> bool:
    """Cached features when the image encoder is what the cache was built from."""
    if prep.recipe.cache.enabled == "off":
        return False
    return not (prep.backbone_trained or prep.pipeline.image_encoder_trainable())


def split_name(prep: Prepared, split: str) -> str:
    name = prep.data.valid_split if split == "valid" else prep.data.test_split
    if name is None:
        raise ClapkitError(f"{prep.recipe.file}: the recipe names no {split} split "
                           f"(set --set data.{split}_split=NAME)")
    return name


def collect_logits(prep: Prepared, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N,C]`` (restricted to the seen classes) and class-order labels ``[N]``."""
    from .engine.distributed import DistInfo
    from .engine.loop import evaluate
    name = split_name(prep, split)
    indices = prep.data.items(name, prep.scenario, list(range(prep.task + 1)))
    if not indices:
        raise ClapkitError(f"split '{name}' has no items of the classes seen by task "
                           f"{prep.task}")
    loader = prep.data.eval_loader(name, indices, cached=use_cache(prep))
    _, got = evaluate(prep.pipeline, loader, _step_config(prep, f"eval {name}"), DistInfo(),
                      collect=True)
    assert got is not None
    order = torch.argsort(got.index)
    return got.logits[order], got.label[order]


def metrics_of(logits: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """top1/top5/WAR/UAR, per-class recall and the confusion matrix over ``names``."""
    c = len(names)
    logits = logits[:, :c].float()
    conf = confusion_matrix(logits, labels, c)
    rec = per_class_accuracy(conf)
    top5 = None
    if c >= 5 and len(labels):
        top = logits.topk(5, dim=1).indices
        top5 = float((top == labels[:, None]).any(dim=1).double().mean())
    return {"top1": war(conf), "top5": top5, "war": war(conf), "uar": uar(conf),
            "per_class": {n: (None if math.isnan(float(a)) else float(a))
                          for n, a in zip(names, rec.tolist())},
            "support": {n: int(s) for n, s in zip(names, conf.sum(1).tolist())},
            "classes": list(names), "confusion": conf.tolist(),
            "num_items": int(len(labels))}


def evaluate_prepared(prep: Prepared, split: str) -> dict[str, Any]:
    logits, labels = collect_logits(prep, split)
    seen = prep.scenario.seen(prep.task) if prep.scenario.incremental else \
        prep.scenario.num_classes
    out = metrics_of(logits, labels, prep.class_names[:seen])
    out.update({"split": split, "split_name": split_name(prep, split),
                "checkpoint": prep.checkpoint, "task": prep.task,
                "recipe": prep.recipe.run.name, "scale": "fraction"})
    if prep.position is not None:
        out["checkpoint_position"] = prep.position
    return out


class _PreparedRun:
    """What :func:`~clapkit.engine.task_eval.plugin_metrics` and a :class:`TaskEvaluation`
    read of a trainer, over a prepared evaluation."""

    def __init__(self, prep: Prepared, host: PluginHost, state: Any) -> None:
        from .engine.distributed import DistInfo
        self.prep, self.data, self.scenario, self.info = prep, prep.data, prep.scenario, DistInfo()
        self.host, self.state = host, state

    def use_cache_for_eval(self) -> bool:
        return use_cache(self.prep)

    def step_cfg(self, task: int, desc: str) -> Any:
        return _step_config(self.prep, desc)


@contextlib.contextmanager
def recipe_listeners(prep: Prepared, host: PluginHost | None, hook: str) -> Iterator[list]:
    """The recipe's ``[log.*]`` plugins that implement ``hook``, built and registered with
    ``host`` for the ``with`` block (none without a host): how ``clapkit eval`` and
    ``clapkit predict`` reach the evaluation plugins outside a run."""
    from .build import build_component
    if host is None:
        yield []
        return
    listeners = [build_component(spec, prep.ctx) for spec in prep.recipe.log.values()]
    listeners = [obj for obj in listeners if hasattr(obj, hook)]
    for n, obj in enumerate(listeners):
        host.register_listener(obj, name=f"{hook}-{n}@{id(obj)}")
    try:
        yield listeners
    finally:
        for obj in listeners:
            host.unregister_listener(obj)


def hooked_metrics(prep: Prepared, split: str, host: PluginHost,
                   result: dict[str, Any]) -> dict[str, Any]:
    """What the recipe's evaluation plugins (``clapkit_task_evaluate``: retrieval,
    captioning, ...) add on ``split``, as at a run's task end; they write no files here
    (the eval JSON holds their figures)."""
    from .engine.state import RunState
    from .engine.task_eval import TaskEvaluation, plugin_metrics
    sc = prep.scenario
    state = RunState(recipe=prep.recipe, out_dir=None, device=prep.device,
                     class_names=list(prep.class_names), num_tasks=sc.num_tasks, task=prep.task)
    run = _PreparedRun(prep, host, state)
    ev = TaskEvaluation(task=prep.task, seen_classes=sc.seen(prep.task) if sc.incremental
                        else None, num_tasks=sc.num_tasks, task_of_class=list(sc.task_of_class),
                        splits={split: split_name(prep, split)}, pipeline=prep.pipeline, tr=run)
    with recipe_listeners(prep, host, "clapkit_task_evaluate"):
        extra = plugin_metrics(run, prep.task, ev, {})
    clash = sorted(set(extra) & set(result))
    if clash:
        raise ClapkitError(f"an evaluation plugin returned metric '{clash[0]}', which "
                           "clapkit eval already reports; choose another name")
    return extra


def eval_target(target: Path, host: PluginHost, *, checkpoint: str | None = None,
                split: str = "valid", out: Path | None = None,
                overrides: tuple[str, ...] | list[str] = (),
                trust_code: bool = False) -> tuple[dict[str, Any], Path]:
    """Evaluate a run folder or a recipe file; returns the result and the JSON written.
    ``trust_code``: see :func:`load_run_recipe`."""
    if split not in SPLITS:
        raise ClapkitError(f"--split: '{split}' is not one of {', '.join(SPLITS)}")
    if target.is_dir():
        recipe = load_run_recipe(target, host, overrides, trust_code=trust_code)
        which = checkpoint or default_checkpoint(target)
        if which not in CHECKPOINTS:
            raise ClapkitError(f"--checkpoint: '{which}' is not one of {', '.join(CHECKPOINTS)}")
        path = target / "checkpoints" / f"{which}.pt"
        if not path.is_file():
            other = "last" if which == "best" else "best"
            raise ClapkitError(f"{target}: no {which} checkpoint at {path} (the run has not "
                               f"saved one yet; try --checkpoint {other})")
        prep = prepare(recipe, host, checkpoint=path, checkpoint_name=which, work_dir=target,
                       need_split=split)
        dest = (out or target) / f"eval-{which}-{split}.json"
        kind = "run"
    elif target.is_file():
        if checkpoint is not None:
            raise ClapkitError(f"--checkpoint applies to a run folder; {target} is a recipe "
                               "file (evaluated as built)")
        recipe = load_recipe(target, host, overrides)
        folder = out or Path(recipe.run.out_dir.format(name=f"{recipe.run.name}-eval"))
        prep = prepare(recipe, host, checkpoint=None, checkpoint_name="none", work_dir=folder,
                       need_split=split)
        dest = folder / "eval.json"
        kind = "recipe"
    else:
        raise ClapkitError(f"{target}: no such run folder or recipe file")
    result = evaluate_prepared(prep, split)
    result.update(hooked_metrics(prep, split, host, result))
    result = {"target": str(target), "kind": kind, **result}
    atomic_write_json(dest, result)
    return result, dest


def format_result(result: dict[str, Any]) -> list[str]:
    """The lines ``clapkit eval`` prints."""
    from .report import format_confusion, format_per_class, pct
    names = result["classes"]
    ckpt = result.get("checkpoint", "none")
    what = "as built (nothing loaded)" if ckpt == "none" else f"checkpoint {ckpt}"
    lines = [f"{result['recipe']}: {what}, split {result['split']} "
             f"('{result['split_name']}', {result['num_items']} items, "
             f"{len(names)} classes)",
             f"  top1 {pct(result['top1'])}%   top5 "
             f"{pct(result['top5']) + '%' if result['top5'] is not None else '- (< 5 classes)'}"
             f"   WAR {pct(result['war'])}%   UAR {pct(result['uar'])}%",
             "  per-class accuracy:"]
    lines += format_per_class([result["per_class"][n] for n in names], names,
                              [result["support"][n] for n in names], indent="    ")
    lines.append("  confusion matrix:")
    lines += format_confusion(result["confusion"], names, indent="    ")
    hooked = [k for k in result.get("plugin_metrics", [])
              if isinstance(result.get(k), (int, float))]
    if hooked:
        lines.append("  evaluation plugins (%): " + " | ".join(
            f"{k} {pct(result[k])}" for k in hooked))
    return lines
