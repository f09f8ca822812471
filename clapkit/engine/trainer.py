"""The :class:`Trainer`: tasks -> stages -> epochs (DESIGN.md section 4).

Flow: seeds, device, process group -> dataset -> backbone -> scenario (class order, task
splits) -> pipeline -> per task: ``on_task_start`` on every component, the stages that run
before the memory update, the replay-memory update, the stages marked ``after_memory``,
``on_task_end`` with the task's view, the task-end evaluation (accuracy-matrix row,
novel-class detection, plugin evaluations), ``last.pt``. At the end the selected checkpoint
(``best.pt`` when ``run.select`` selects, else the last model) gives the final figures. The pieces live in their own modules: stage_runner
(one stage), task_eval (evaluation after a task), memory, lifecycle, resume (checkpoints),
best (model selection), summary.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..build_info import recipe_header
from ..errors import RecipeError
from ..metrics import AccuracyMatrix
from ..pipeline import Pipeline
from ..plugins import PluginHost
from ..recipe import Recipe
from . import checkpoint as ckpt
from . import lifecycle, resume
from .assembly import assemble, check_recipe_rules
from .best import BestTracker, selection_metric
from .data import RunData
from .distributed import DistInfo, init_distributed, shutdown
from .events import Events
from .loop import Collected, StepConfig, amp_policy, evaluate
from .memory import select_exemplars
from .scenario import Scenario, make_scenario
from .setup import (apply_threads, resolve_device, resolve_out_dir, restore_threads,
                    seed_everything)
from .stage_runner import run_stage
from .stages import expand_glob, glob_matches
from .state import RunState
from .summary import build_summary, final_metrics, write_accuracy_matrix, write_summary
from .task_eval import evaluate_task

log = logging.getLogger("clapkit.engine")


class Trainer:
    """One run of a validated recipe (built by :func:`clapkit.engine.runner.run_recipe`)."""

    def __init__(self, recipe: Recipe, host: PluginHost, *, out_dir: str | Path | None = None,
                 resume: bool = False) -> None:
        self.recipe, self.host, self.resume = recipe, host, resume
        self.out = resolve_out_dir(recipe, out_dir)
        self._check_recipe()

    # -- checks -----------------------------------------------------------------------------

    def _check_recipe(self) -> None:
        """The recipe's own rules, before the output folder is claimed."""
        check_recipe_rules(self.recipe)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(self.recipe.run.device, local_rank)
        self.info: DistInfo = init_distributed(self.device.type)
        threads_before = apply_threads(self.recipe.run.threads)
        try:
            return self._run()
        finally:
            restore_threads(threads_before)
            shutdown(self.info)

    def _build(self) -> None:
        r, info = self.recipe, self.info
        parts = assemble(r, self.host, device=self.device, work_dir=self.out,
                         check_rules=False)          # the same assembly as eval and check
        source, backbone, ctx = parts.source, parts.backbone, parts.ctx
        self.scenario: Scenario = parts.scenario
        sc = self.scenario
        self.data = RunData(source, r, backbone, info, r.run.seed, self.device)
        self.pipeline: Pipeline = parts.pipeline.to(self.device)
        self.selector = parts.selector
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
        backbone_names = [n for n, _ in self.pipeline.named_parameters()
                          if n.startswith("backbone.")]
        self.backbone_will_train = any(glob_matches(expand_glob(p, 0), n)
                                       for s in r.stages for p in s.train
                                       for n in backbone_names)

    def _run(self) -> dict[str, Any]:
        r, info = self.recipe, self.info
        t0 = time.time()
        seed_everything(r.run.seed, r.run.deterministic)
        st: dict[str, Any] | None = None
        if self.resume:
            st = resume.read_last(self.out, r.to_dict())
        self._build()
        # progress (resumable): memory, accuracy matrix, selected epoch, last evaluation
        self.memory: list[int] = []
        self.task_memory: list[int] = []
        self.acc = AccuracyMatrix()
        self.best = BestTracker(criterion=selection_metric(r.run.select, r.head is not None,
                                                           self.scenario.incremental))
        self.last_task_metrics: dict[str, Any] = {}
        self.backbone_trained = False
        if st is not None:
            resume.restore(self, st)
            self.state.resumed_from = dict(st["position"])
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "recipe.toml", recipe_header() + r.to_toml())
        try:
            self.events.attach_loggers(r, self.ctx)
            self.events.fire("clapkit_run_start")
            self._tasks(st)
            summary = build_summary(self, final_metrics(self), time.time() - t0)
            self.state.summary = summary
            if info.is_main:
                write_summary(self.out, summary)
            self.events.fire("clapkit_run_end", summary=summary)
        finally:
            self.events.detach()
        return summary

    # -- tasks --------------------------------------------------------------------------------

    def start_components(self, task: int) -> None:
        lifecycle.start_task(self, task)

    def _tasks(self, st: dict[str, Any] | None) -> None:
        sc = self.scenario
        position = st["position"] if st is not None else None
        start_task = 0
        if position is not None:
            start_task = position["task"] + (1 if position["phase"] == "task_done" else 0)
            ckpt.set_rng_state(st["rng"])   # type: ignore[index]
        for task in range(start_task, sc.num_tasks):
            self.state.task = task
            pos = position if position is not None and position["task"] == task else None
            if pos is None:
                self.best.reset()
                self.start_components(task)
            self.events.fire("clapkit_task_start", task=task, classes=sc.classes_of(task))
            self._task(task, pos, st)

    def _task(self, task: int, pos: dict[str, Any] | None, st: dict[str, Any] | None) -> None:
        r, sc = self.recipe, self.scenario
        stages = [(i, s) for i, s in enumerate(r.stages) if s.runs_in(task)]
        before = [(i, s) for i, s in stages if not s.after_memory]
        after = [(i, s) for i, s in stages if s.after_memory]
        # a resume inside an after-memory stage: the memory update is done already
        resumed_after = (pos is not None and pos["stage"] < len(r.stages)
                         and r.stages[pos["stage"]].after_memory)
        if pos is None:
            self.task_memory = list(self.memory)   # what the task trains with (checkpointed)
        if not resumed_after:
            self._stages(task, before, pos, st)
        collected: Collected | None = None
        wants_memory = r.memory.size > 0 and (task < sc.num_tasks - 1 or bool(after))
        if wants_memory and not resumed_after:
            self.memory, collected = self._update_memory(task)
        if after:
            self._stages(task, after, pos if resumed_after else None, st)
            collected = None                   # the model moved since the memory update
        # what components learn at the task's end (anchors, statistics) is in place before
        # the task-end evaluation, and so in the last.pt that evaluation's figures belong to
        lifecycle.end_task(self, task, collected, self.task_memory)
        metrics = evaluate_task(self, task)
        if r.memory.size > 0:
            metrics["memory_size"] = len(self.memory)
        self.last_task_metrics = metrics
        write_accuracy_matrix(self)
        self.events.fire("clapkit_task_end", task=task, metrics=metrics)
        resume.save_last(self, {"task": task, "stage": len(r.stages), "epoch": -1,
                                "phase": "task_done"}, None, None, None)

    def _stages(self, task: int, stages: list[tuple[int, Any]], pos: dict[str, Any] | None,
                st: dict[str, Any] | None) -> None:
        for s_idx, stage in stages:
            first_epoch, opt_state = 0, None
            if pos is not None:
                if s_idx < pos["stage"]:
                    continue
                if s_idx == pos["stage"]:
                    first_epoch = pos["epoch"] + 1
                    opt_state = st
                    if first_epoch >= stage.epochs:
                        continue
            run_stage(self, task, s_idx, stage, first_epoch, opt_state)

    # -- shared by the stage runner, evaluation and memory ----------------------------------

    def seen(self, task: int) -> int | None:
        return self.scenario.seen(task) if self.scenario.incremental else None

    def eval_indices(self, split: str, task: int) -> list[int]:
        return self.data.items(split, self.scenario, list(range(task + 1)))

    def use_cache(self, stage_name: str) -> bool:
        """Whether the stage reads cached image features (said once per stage when a
        prompt that changes the image encoder prevents it)."""
        mode = self.recipe.cache.enabled
        pipe = self.pipeline
        encoder_moves = not pipe.features_cacheable() or self.backbone_trained
        if mode == "off":
            return False
        if encoder_moves:
            if pipe.changes_image_encoder:
                why = f"prompt '{pipe.image_prompt}' changes the image encoder"
            elif pipe.backbone_trainable():
                why = "it trains the image encoder"
            else:
                why = "it follows a stage that trained the image encoder"
            if mode == "on":
                raise RecipeError(self.recipe.file, "cache.enabled",
                                  f"cache.enabled = \"on\" but stage '{stage_name}': {why}, so "
                                  "its image features cannot come from the cache (use \"auto\")")
            # a prompt that changes the encoder is easy to miss in a recipe: said out loud
            # (once per stage); a stage training the encoder asked for it by name
            level = logging.WARNING if pipe.changes_image_encoder else logging.INFO
            log.log(level, "stage '%s': image features are computed from pixels, not read "
                    "from the cache: %s", stage_name, why)
            return False
        return True

    def use_cache_for_eval(self) -> bool:
        if self.recipe.cache.enabled == "off":
            return False
        return self.pipeline.features_cacheable() and not self.backbone_trained

    def step_cfg(self, task: int, desc: str, **kw: Any) -> StepConfig:
        r = self.recipe
        return StepConfig(device=self.device, remap=self.remap,
                          task_of_class=self.task_of_class_t,
                          num_classes=self.scenario.num_classes, seen=self.seen(task),
                          task=task, num_samples=r.run.num_samples,
                          amp=self.amp, grad_clip=r.run.grad_clip, mixup_alpha=r.run.mixup_alpha,
                          progress=r.run.progress, desc=desc, eval_seed=r.run.seed, **kw)

    def evaluate_split(self, split: str, task: int, cached: bool, what: str) -> dict[str, Any]:
        loader = self.data.eval_loader(split, self.eval_indices(split, task), cached=cached)
        meter, _ = evaluate(self.pipeline, loader, self.step_cfg(task, f"eval {what}"),
                            self.info)
        return meter.compute()

    def _update_memory(self, task: int) -> tuple[list[int], Collected]:
        """The new memory out of the task's items plus the old memory (every rank scores
        every candidate, so all ranks pick the same memory), and the candidates' outputs
        (they are the task's view when no stage runs after the memory update)."""
        candidates = lifecycle.task_items(self, task, self.memory)
        collected = lifecycle.encode_items(self, task, candidates, "memory")
        picked = select_exemplars(self.selector, collected, self.recipe.memory.size,
                                  self.seen(task))
        return picked, collected

    def model_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint keeps: the backbone's too once it trained -- and from
        the start when a later stage will train it, so ``best.pt`` of an earlier epoch
        restores the backbone it was selected with."""
        return ckpt.model_state(self.pipeline, include_backbone=self.backbone_trained
                                or self.backbone_will_train)
