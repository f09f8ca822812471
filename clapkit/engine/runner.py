"""``run_recipe``: tasks -> stages -> epochs (DESIGN.md section 4).

Flow: plugins and recipe -> seeds, device, process group -> backbone -> dataset -> scenario
(class order, task splits) -> pipeline -> per task: stages (real freezing, optimizer and
schedule per stage, cached features while the image encoder is frozen), evaluation on train and
valid every epoch, ``last.pt`` after every epoch and ``best.pt`` at each best valid UAR, then
the replay-memory update and the evaluation on all seen classes (a row of the accuracy matrix).
A resumed run continues from ``last.pt`` mid-task, mid-stage, mid-run, with the RNG states,
optimizer, scheduler and scaler restored, and reaches the same weights.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..build import build_component
from ..errors import ClapkitError, RecipeError
from ..interfaces import BuildContext
from ..metrics import AccuracyMatrix, task_accuracy
from ..pipeline import Pipeline, build_pipeline
from ..plugins import PluginHost, get_plugin_host
from ..recipe import Recipe, load_recipe
from ..sections import StageConfig
from . import checkpoint as ckpt
from .data import RunData
from .distributed import DistInfo, init_distributed, shutdown, wrap
from .events import Events
from .loop import StepConfig, amp_policy, evaluate, make_scaler, train_epoch
from .memory import select_exemplars
from .scenario import Scenario, make_scenario
from .stages import (apply_freezing, build_optimizer, build_scheduler, check_stage,
                     param_groups, select_parameters)
from .state import RunState

#: recipe keys that may change between a run and its resume
RESUME_FREE = {("run", "progress"), ("run", "out_dir"), ("run", "device"), ("log",),
               ("data", "num_workers"), ("data", "eval_batch_size"), ("cache", "dir"),
               ("cache", "batch_size"), ("cache", "enabled")}


def run_recipe(path: str | Path, *, overrides: list[str] | tuple[str, ...] = (),
               out_dir: str | Path | None = None, resume: bool = False,
               host: PluginHost | None = None) -> dict[str, Any]:
    """Train and evaluate the recipe at ``path``; returns the run summary (also written to
    ``<out>/summary.json``). ``resume`` continues from ``<out>/checkpoints/last.pt``."""
    host = host or get_plugin_host()
    recipe = load_recipe(path, host, overrides)
    return Trainer(recipe, host, out_dir=out_dir, resume=resume).run()


def resolve_out_dir(recipe: Recipe, out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    try:
        return Path(recipe.run.out_dir.format(name=recipe.run.name))
    except (KeyError, IndexError, ValueError) as exc:
        raise RecipeError(recipe.file, "run.out_dir", f"bad placeholder in "
                          f"'{recipe.run.out_dir}' ({exc}); only {{name}} is known") from None


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ClapkitError(f"run.device = \"{spec}\" but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _flat(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, ignoring the keys a resume may change."""
    a, b = _flat(old), _flat(new)

    def free(k: tuple[str, ...]) -> bool:
        return any(k[:len(f)] == f for f in RESUME_FREE)

    return sorted(".".join(k) for k in set(a) | set(b) if not free(k) and a.get(k) != b.get(k))


class Trainer:
    """One run of a validated recipe (built by :func:`run_recipe`)."""

    def __init__(self, recipe: Recipe, host: PluginHost, *, out_dir: str | Path | None = None,
                 resume: bool = False) -> None:
        self.recipe, self.host, self.resume = recipe, host, resume
        self.out = resolve_out_dir(recipe, out_dir)
        self._check_recipe()

    # -- checks -----------------------------------------------------------------------------

    def _check_recipe(self) -> None:
        r, f = self.recipe, self.recipe.file
        names = [s.name for s in r.stages]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise RecipeError(f, "stages", f"two stages are named '{dup}'")
        for i, s in enumerate(r.stages):
            check_stage(s, file=f, key=f"stages[{i}]")
        if r.memory.size > 0 and r.selector is None:
            raise RecipeError(f, "selector", "memory.size > 0 needs a [selector] that picks "
                              "the exemplars (e.g. plugin = \"random\" or \"herding\")")
        if r.selector is not None and r.memory.size == 0:
            raise RecipeError(f, "memory.size", "a [selector] is set but memory.size = 0, so "
                              "it would never be used; set a memory size or drop [selector]")

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        r = self.recipe
        want = r.run.device
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(want, local_rank)
        self.info: DistInfo = init_distributed(self.device.type)
        try:
            return self._run()
        finally:
            shutdown(self.info)

    def _run(self) -> dict[str, Any]:
        r, info = self.recipe, self.info
        t0 = time.time()
        seed_everything(r.run.seed, r.run.deterministic)
        if self.resume and not (self.out / "checkpoints" / "last.pt").is_file():
            raise ClapkitError(f"--resume: no checkpoint at {self.out / 'checkpoints' / 'last.pt'}"
                               " (run without --resume to start afresh)")
        ctx = BuildContext(host=self.host, recipe_file=r.file, work_dir=self.out,
                           device=self.device, seed=r.run.seed)
        # the data before the backbone: a missing dataset is reported before any weights
        # are downloaded (the dataset factories do not need the backbone)
        source = self._build_source(ctx)
        backbone = build_component(r.backbone, ctx)
        ctx.backbone = backbone
        self.scenario: Scenario = make_scenario(r.scenario, len(source.classes), file=r.file)
        sc = self.scenario
        counts = source.class_counts(r.data.keys.train_split) \
            if r.data.keys.train_split in source.splits() else None
        ctx.class_names = [source.classes[o] for o in sc.order]
        ctx.class_counts = [counts[o] for o in sc.order] if counts else None
        ctx.task_of_class = sc.task_of_class
        ctx.streams = tuple(source.streams)
        ctx.num_frames = source.num_frames
        self.data = RunData(source, r, backbone, info, r.run.seed, self.device)
        self.pipeline: Pipeline = build_pipeline(r, ctx, backbone).to(self.device)
        self.selector = build_component(r.selector, ctx) if r.selector else None
        self.ctx = ctx
        self.remap = sc.remap_table()
        self.task_of_class_t = torch.as_tensor(sc.task_of_class, dtype=torch.long)
        self.amp = amp_policy(r.run.use_amp, r.run.amp_dtype, self.device)

        self.state = RunState(recipe=r, out_dir=self.out if info.is_main else None,
                              rank=info.rank, world_size=info.world_size, device=self.device,
                              class_names=list(ctx.class_names),
                              task_classes=[sc.classes_of(t) for t in range(sc.num_tasks)],
                              num_tasks=sc.num_tasks, select_split=self.data.valid_split,
                              model=self.pipeline)
        self.events = Events(self.host, self.state)
        # progress (resumable): memory, accuracy matrix, bests, last evaluation
        self.memory: list[int] = []
        self.acc = AccuracyMatrix()
        self.best: dict[str, float] = {}
        self.last_task_metrics: dict[str, Any] = {}
        self.backbone_trained = False
        position: dict[str, Any] | None = None
        resume_state: dict[str, Any] | None = None
        if self.resume:
            resume_state = self._load_resume()
            position = resume_state["position"]
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.toml").write_text(r.to_toml(), encoding="utf-8")
        try:
            self.events.attach_loggers(r, ctx)
            self.events.fire("clapkit_run_start")
            self._tasks(position, resume_state)
            summary = self._summary(time.time() - t0)
            self.state.summary = summary
            if info.is_main:
                (self.out / "summary.json").write_text(
                    json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n",
                    encoding="utf-8")
            self.events.fire("clapkit_run_end", summary=summary)
        finally:
            self.events.detach()
        return summary

    def _build_source(self, ctx: BuildContext) -> Any:
        """The dataset; when it cannot be opened and a ``demo_<recipe>.toml`` sits beside
        the recipe, the one-line error says how to run that demo instead."""
        try:
            return build_component(self.recipe.data, ctx)
        except ClapkitError as exc:
            f = Path(self.recipe.data.file or self.recipe.file or "")
            demo = f.with_name(f"demo_{f.name}")
            if f.name and not f.name.startswith("demo_") and demo.is_file():
                raise ClapkitError(f"{exc} -- to try this recipe's pipeline on generated data "
                                   f"instead, run: clapkit run {demo}") from exc
            raise

    # -- resume -------------------------------------------------------------------------------

    def _load_resume(self) -> dict[str, Any]:
        path = self.out / "checkpoints" / "last.pt"
        st = ckpt.load(path)
        diff = recipe_differences(st["recipe"], self.recipe.to_dict())
        if diff:
            raise ClapkitError(f"--resume: the recipe differs from the one {path} was written "
                               f"with at {', '.join(diff[:5])}; resume with the same recipe "
                               "or start a new run in another --out folder")
        self.backbone_trained = bool(st["backbone_trained"])
        ckpt.load_model_state(self.pipeline, st["model"], where=str(path))
        self.memory = list(st["memory"])
        self.acc = AccuracyMatrix.from_dict(st["accuracy_matrix"])
        self.best = dict(st["best"])
        self.last_task_metrics = dict(st["last_task_metrics"])
        self.state.global_epoch = int(st["global_epoch"])
        return st

    # -- tasks --------------------------------------------------------------------------------

    def _tasks(self, position: dict[str, Any] | None, st: dict[str, Any] | None) -> None:
        sc = self.scenario
        start_task = 0
        if position is not None:
            start_task = position["task"] + (1 if position["phase"] == "task_done" else 0)
            ckpt.set_rng_state(st["rng"])   # type: ignore[index]
        for task in range(start_task, sc.num_tasks):
            self.state.task = task
            pos = position if position is not None and position["task"] == task else None
            if pos is None:
                self.best = {}
            self.events.fire("clapkit_task_start", task=task, classes=sc.classes_of(task))
            train_idx = self._train_indices(task)
            for s_idx, stage in enumerate(self.recipe.stages):
                first_epoch, opt_state = 0, None
                if pos is not None:
                    if s_idx < pos["stage"]:
                        continue
                    if s_idx == pos["stage"]:
                        first_epoch = pos["epoch"] + 1
                        opt_state = st
                        if first_epoch >= stage.epochs:
                            continue
                self._stage(task, s_idx, stage, train_idx, first_epoch, opt_state)
            self._task_end(task)

    def _train_indices(self, task: int) -> list[int]:
        labels = self.data.labels[self.data.train_split]
        new = self.scenario.items_of(labels, [task])
        return sorted(set(new) | set(self.memory))

    def _seen(self, task: int) -> int | None:
        return self.scenario.seen(task) if self.scenario.incremental else None

    def _eval_indices(self, split: str, task: int) -> list[int]:
        labels = self.data.labels[split]
        return self.scenario.items_of(labels, list(range(task + 1)))

    def _use_cache(self, stage_name: str) -> bool:
        mode = self.recipe.cache.enabled
        encoder_moves = self.pipeline.image_encoder_trainable() or self.backbone_trained
        if mode == "off":
            return False
        if encoder_moves:
            if mode == "on":
                why = ("trains the image encoder" if self.pipeline.image_encoder_trainable()
                       else "follows a stage that trained the image encoder")
                raise RecipeError(self.recipe.file, "cache.enabled",
                                  f"cache.enabled = \"on\" but stage '{stage_name}' {why}, so "
                                  "its image features cannot come from the cache (use \"auto\")")
            return False
        return True

    def _step_cfg(self, task: int, desc: str, **kw: Any) -> StepConfig:
        r = self.recipe
        return StepConfig(device=self.device, remap=self.remap,
                          task_of_class=self.task_of_class_t,
                          num_classes=self.scenario.num_classes, seen=self._seen(task),
                          task=task, num_samples=r.run.num_samples,
                          amp=self.amp, grad_clip=r.run.grad_clip, mixup_alpha=r.run.mixup_alpha,
                          progress=r.run.progress, desc=desc, **kw)

    # -- one stage ----------------------------------------------------------------------------

    def _stage(self, task: int, s_idx: int, stage: StageConfig, train_idx: list[int],
               first_epoch: int, st: dict[str, Any] | None) -> None:
        r, pipe = self.recipe, self.pipeline
        key = f"stages[{s_idx}]"
        self.state.stage, self.state.stage_name = s_idx, stage.name
        params = select_parameters(pipe, stage, file=r.file, key=key)
        apply_freezing(pipe, params)
        if any(n.startswith("backbone.") for n in params):
            self.backbone_trained = True
        groups = param_groups(params, stage, file=r.file, key=key)
        group_names = [g.pop("name") for g in groups]
        optimizer = build_optimizer(groups, stage)
        cached = self._use_cache(stage.name)
        scheduler = build_scheduler(optimizer, stage, self.data.steps_per_epoch(train_idx))
        scaler = make_scaler(self.amp)
        if st is not None:
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            if scaler is not None and st.get("scaler") is not None:
                scaler.load_state_dict(st["scaler"])
        model = wrap(pipe, self.info, self.device)
        self.state.optimizer = optimizer
        self.events.fire("clapkit_stage_start", task=task, stage=stage.name,
                         trainable=sorted(params))
        steps = skipped = 0
        for epoch in range(first_epoch, stage.epochs):
            self.state.epoch = epoch
            t_epoch = time.time()
            g_epoch = self.state.global_epoch
            loader = self.data.train_loader(train_idx, epoch=g_epoch, cached=cached)
            cfg = self._step_cfg(task, f"t{task} {stage.name} {epoch + 1}/{stage.epochs}",
                                 mix_seed=r.run.seed * 1_000_003 + g_epoch)
            stats = train_epoch(model, pipe, loader, optimizer, scheduler, scaler, epoch, cfg,
                                self.info)
            metrics: dict[str, Any] = {}
            tr = stats.meter.compute()
            metrics["train/war"], metrics["train/uar"] = tr["war"], tr["uar"]
            metrics.update({f"loss/{k}": v for k, v in stats.terms.items()})
            metrics["train/grad_norm"] = stats.grad_norm
            metrics["train/skipped_steps"] = stats.skipped
            steps, skipped = steps + stats.steps, skipped + stats.skipped
            for name, lr in zip(group_names, stats.lrs):
                metrics[f"lr/{name}"] = lr
            last = epoch == stage.epochs - 1
            if last or (epoch + 1) % r.run.eval_every == 0:
                va = self._evaluate(self.data.valid_split, task, cached, "valid")
                metrics["valid/war"], metrics["valid/uar"] = va["war"], va["uar"]
                metrics["valid/confusion"] = va["confusion"]
            improved = self._update_best(metrics)
            metrics.update({f"best/{k}": v for k, v in self.best.items()})
            metrics["select_split"] = self.data.valid_split
            metrics["cached"] = cached
            metrics["epoch_time_s"] = time.time() - t_epoch
            self.state.global_epoch = g_epoch + 1
            if improved:
                self._save_best(task, s_idx, epoch, metrics)
            self.events.fire("clapkit_epoch_end", task=task, stage=stage.name, epoch=epoch,
                             metrics=metrics)
            self._save_last({"task": task, "stage": s_idx, "epoch": epoch, "phase": "epoch"},
                            optimizer, scheduler, scaler)
        if steps and skipped == steps:
            raise ClapkitError(f"{r.file}: stage '{stage.name}' trained nothing: in none of its "
                               "steps did the total loss depend on the parameters it selects "
                               f"({', '.join(stage.train)}); check its train globs and the "
                               "loss weights and warmups")
        self.events.fire("clapkit_stage_end", task=task, stage=stage.name)

    def _evaluate(self, split: str, task: int, cached: bool, what: str) -> dict[str, Any]:
        loader = self.data.eval_loader(split, self._eval_indices(split, task), cached=cached)
        meter, _ = evaluate(self.pipeline, loader, self._step_cfg(task, f"eval {what}"),
                            self.info)
        return meter.compute()

    def _update_best(self, metrics: dict[str, Any]) -> bool:
        """Best-so-far of each of train/valid WAR/UAR; True when valid UAR improved (the
        model-selection criterion, written to best.pt)."""
        improved = False
        for k in ("train/war", "train/uar", "valid/war", "valid/uar"):
            v = metrics.get(k)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            name = k.replace("/", "_")
            if name not in self.best or v > self.best[name]:
                self.best[name] = float(v)
                improved |= k == "valid/uar"
        return improved

    # -- end of a task ------------------------------------------------------------------------

    def _task_end(self, task: int) -> None:
        sc, r = self.scenario, self.recipe
        cached = self._use_cache_for_eval()
        va = self._evaluate(self.data.valid_split, task, cached, "valid (seen classes)")
        conf = torch.as_tensor(va["confusion"])
        per_task = task_accuracy(conf, sc.task_of_class, sc.num_tasks)[: task + 1].tolist()
        self.acc.update(task, per_task, va["war"])
        metrics: dict[str, Any] = {"acc_seen": va["war"], "valid/war": va["war"],
                                   "valid/uar": va["uar"], "valid/confusion": va["confusion"],
                                   "select_split": self.data.valid_split}
        metrics.update({f"acc_task/{j}": a for j, a in enumerate(per_task)})
        if self.data.test_split:
            te = self._evaluate(self.data.test_split, task, cached, "test")
            metrics.update({"test/war": te["war"], "test/uar": te["uar"],
                            "test/confusion": te["confusion"]})
        if r.memory.size > 0 and task < sc.num_tasks - 1:
            self.memory = self._update_memory(task, cached)
            metrics["memory_size"] = len(self.memory)
        self.last_task_metrics = metrics
        self.events.fire("clapkit_task_end", task=task, metrics=metrics)
        self._save_last({"task": task, "stage": len(r.stages), "epoch": -1,
                         "phase": "task_done"}, None, None, None)

    def _use_cache_for_eval(self) -> bool:
        if self.recipe.cache.enabled == "off":
            return False
        return not (self.pipeline.image_encoder_trainable() or self.backbone_trained)

    def _update_memory(self, task: int, cached: bool) -> list[int]:
        labels = self.data.labels[self.data.train_split]
        candidates = sorted(set(self.scenario.items_of(labels, [task])) | set(self.memory))
        loader = self.data.eval_loader(self.data.train_split, candidates, cached=cached,
                                       shard=False)
        # every rank scores every candidate (no sharding), so all ranks pick the same memory
        _, collected = evaluate(self.pipeline, loader, self._step_cfg(task, "memory"),
                                self.info, collect=True)
        assert collected is not None
        return select_exemplars(self.selector, collected, self.recipe.memory.size,
                                self._seen(task))

    # -- checkpoints --------------------------------------------------------------------------

    def _model_state(self) -> dict[str, torch.Tensor]:
        return ckpt.model_state(self.pipeline, include_backbone=self.backbone_trained)

    def _save_last(self, position: dict[str, Any], optimizer: Any, scheduler: Any,
                   scaler: Any) -> None:
        if not self.info.is_main:
            return
        state = {"format": ckpt.FORMAT, "recipe": self.recipe.to_dict(),
                 "position": position, "global_epoch": self.state.global_epoch,
                 "model": self._model_state(), "backbone_trained": self.backbone_trained,
                 "optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "scaler": scaler.state_dict() if scaler is not None else None,
                 "rng": ckpt.rng_state(), "best": dict(self.best),
                 "accuracy_matrix": self.acc.to_dict(), "memory": list(self.memory),
                 "last_task_metrics": self.last_task_metrics,
                 "class_order": list(self.scenario.order)}
        path = ckpt.atomic_save(state, self.out / "checkpoints" / "last.pt")
        self.events.fire("clapkit_checkpoint_saved", path=str(path))

    def _save_best(self, task: int, s_idx: int, epoch: int, metrics: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        state = {"format": ckpt.FORMAT, "recipe": self.recipe.to_dict(),
                 "position": {"task": task, "stage": s_idx, "epoch": epoch},
                 "model": self._model_state(), "backbone_trained": self.backbone_trained,
                 "metrics": {k: v for k, v in metrics.items() if k != "valid/confusion"},
                 "class_order": list(self.scenario.order)}
        path = ckpt.atomic_save(state, self.out / "checkpoints" / "best.pt")
        self.events.fire("clapkit_checkpoint_saved", path=str(path))

    # -- summary ------------------------------------------------------------------------------

    def _summary(self, seconds: float) -> dict[str, Any]:
        m = self.last_task_metrics
        out: dict[str, Any] = {"final/valid_war": m.get("valid/war", math.nan),
                               "final/valid_uar": m.get("valid/uar", math.nan),
                               "final/valid_confusion": m.get("valid/confusion"),
                               "select_split": self.data.valid_split,
                               "num_tasks": self.scenario.num_tasks,
                               "epochs": self.state.global_epoch,
                               "wall_time_s": seconds, "out_dir": str(self.out)}
        if "test/war" in m:
            out["final/test_war"], out["final/test_uar"] = m["test/war"], m["test/uar"]
        out.update({f"best/{k}": v for k, v in self.best.items()})
        if self.scenario.incremental:
            out.update(self.acc.summary())
            out["accuracy_matrix"] = self.acc.to_dict()["rows"]
        return out


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
