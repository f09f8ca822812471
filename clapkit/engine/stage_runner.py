"""One training stage of one task: its items and sampler, real freezing, optimizer and
schedule, the epochs with their evaluation, model selection and checkpoints."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..errors import ClapkitError, RecipeError
from ..sections import StageConfig
from .distributed import wrap
from .loop import TrainStep, make_scaler, train_epoch
from .resume import save_best, save_last
from .task_eval import plugin_metrics, task_evaluation
from .stages import apply_freezing, build_optimizer, build_scheduler, param_groups, \
    select_parameters

log = logging.getLogger("clapkit.engine")


def stage_split(tr: Any, stage: StageConfig) -> str:
    """The split ``stage`` trains on: its own ``split``, else the train split."""
    return stage.split or tr.data.train_split


def stage_items(tr: Any, task: int, stage: StageConfig) -> list[int]:
    """Items of ``stage`` in ``task``: the task's new items (of the stage's split), the
    replay memory, or both (``stage.data``)."""
    if stage.data == "memory":
        return sorted(tr.memory)
    split = stage_split(tr, stage)
    new = tr.data.items(split, tr.scenario, [task])
    if stage.data == "task" or split != tr.data.train_split:   # memory: train-split items
        return sorted(new)
    return sorted(set(new) | set(tr.memory))


#: step outputs that do not depend on the prompts' text features
IMAGE_SIDE_OUTPUTS = frozenset({"z", "features", "raw", "stream_z", "step"})


def losses_read_text(pipe: Any) -> bool:
    """Whether some loss reads an output the prompts' text features feed (logits, text,
    views, aux, distributions): only then must prompts refresh at every step while the text
    tower trains. Without such a loss the train accuracy of an epoch uses the prompts of
    its start."""
    return any(n not in IMAGE_SIDE_OUTPUTS for _, loss in pipe.stage_losses()
               for n in getattr(loss, "needs", ("logits",)))


def text_tower_trains(backbone: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> bool:
    """Whether any of the trained ``backbone.*`` parameters moves the text features (one
    probe through ``encode_text``: exact for any backbone, whatever its parameter names)."""
    trained = [p for n, p in params.items() if n.startswith("backbone.") and p.requires_grad]
    if not trained:
        return False
    with torch.enable_grad():
        out = backbone.encode_text(backbone.tokenize(["a"]))
        if not out.requires_grad:
            return False
        grads = torch.autograd.grad(out.float().sum(), trained, allow_unused=True)
    return any(g is not None for g in grads)


def run_stage(tr: Any, task: int, s_idx: int, stage: StageConfig, first_epoch: int,
              st: dict[str, Any] | None) -> None:
    """Train ``stage`` from ``first_epoch`` (``st``: the optimizer/scheduler/scaler states
    to continue from on a resume)."""
    r, pipe = tr.recipe, tr.pipeline
    key = f"stages[{s_idx}]"
    items = stage_items(tr, task, stage)
    if not items:
        log.warning("task %d: stage '%s' skipped: no items (data = \"%s\", replay memory "
                    "of %d)", task, stage.name, stage.data, len(tr.memory))
        return
    tr.state.stage, tr.state.stage_name = s_idx, stage.name
    params = select_parameters(pipe, stage, file=r.file, key=key, task=task)
    apply_freezing(pipe, params)
    if any(n.startswith("backbone.") for n in params):
        tr.backbone_trained = True
    # a trained text tower makes features derived from it at build time stale: prompts
    # recompute them every step of this stage -- when a loss reads them; else once per epoch,
    # before the evaluation (image-text objectives encode their own captions)
    tower_moves = text_tower_trains(pipe.backbone, params)
    pipe.active_losses = frozenset(stage.losses) if stage.losses else None
    pipe.refresh_each_step = tower_moves and losses_read_text(pipe)
    groups = param_groups(params, stage, file=r.file, key=key, task=task)
    group_names = [g.pop("name") for g in groups]
    optimizer = build_optimizer(groups, stage)
    cached = tr.use_cache(stage.name)
    split = stage_split(tr, stage)
    scheduler = build_scheduler(optimizer, stage,
                                tr.data.steps_per_epoch(items, stage.sampler, split))
    scaler = make_scaler(tr.amp)
    if st is not None:
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler") is not None:
            scaler.load_state_dict(st["scaler"])
    model = wrap(TrainStep(pipe), tr.info, tr.device)   # losses inside DDP's forward
    tr.state.optimizer = optimizer
    tr.events.fire("clapkit_stage_start", task=task, stage=stage.name,
                   trainable=sorted(params))
    steps = skipped = 0
    try:
        for epoch in range(first_epoch, stage.epochs):
            tr.state.epoch = epoch
            t_epoch = time.time()
            g_epoch = tr.state.global_epoch
            loader = tr.data.train_loader(items, epoch=g_epoch, cached=cached,
                                          sampler=stage.sampler, split=split)
            cfg = tr.step_cfg(task, f"t{task} {stage.name} {epoch + 1}/{stage.epochs}",
                              mix_seed=r.run.seed * 1_000_003 + g_epoch,
                              where=f"task {task}, stage '{stage.name}', epoch "
                                    f"{epoch + 1}/{stage.epochs}")
            stats = train_epoch(model, pipe, loader, optimizer, scheduler, scaler, epoch, cfg,
                                tr.info)
            if tower_moves:
                pipe.refresh_prompts()          # evaluation sees the tower as it is now
            metrics: dict[str, Any] = {}
            tr_m = stats.meter.compute()
            metrics["train/war"], metrics["train/uar"] = tr_m["war"], tr_m["uar"]
            metrics.update({f"loss/{k}": v for k, v in stats.terms.items()})
            metrics["train/grad_norm"] = stats.grad_norm
            metrics["train/skipped_steps"] = stats.skipped
            steps, skipped = steps + stats.steps, skipped + stats.skipped
            for name, lr in zip(group_names, stats.lrs):
                metrics[f"lr/{name}"] = lr
            last = epoch == stage.epochs - 1
            if last or (epoch + 1) % r.run.eval_every == 0:
                if pipe.head is not None:
                    va = tr.evaluate_split(tr.data.valid_split, task, cached, "valid")
                    metrics["valid/war"], metrics["valid/uar"] = va["war"], va["uar"]
                    metrics["valid/confusion"] = va["confusion"]
                epoch_evaluations(tr, task, epoch, metrics)
            improved = tr.best.update(metrics)
            metrics.update(tr.best.metrics())
            metrics["select_split"] = tr.data.valid_split
            metrics["cached"] = cached
            metrics["epoch_time_s"] = time.time() - t_epoch
            tr.state.global_epoch = g_epoch + 1
            if improved:
                save_best(tr, task, s_idx, epoch, metrics)
            tr.events.fire("clapkit_epoch_end", task=task, stage=stage.name, epoch=epoch,
                           metrics=metrics)
            save_last(tr, {"task": task, "stage": s_idx, "epoch": epoch, "phase": "epoch"},
                      optimizer, scheduler, scaler)
    finally:
        pipe.refresh_each_step = False
        pipe.active_losses = None
    if steps and skipped == steps:
        raise ClapkitError(f"{r.file}: stage '{stage.name}' trained nothing: in none of its "
                           "steps did the total loss depend on the parameters it selects "
                           f"({', '.join(stage.train)}); check its train globs and the "
                           "loss weights and warmups")
    tr.events.fire("clapkit_stage_end", task=task, stage=stage.name)


def epoch_evaluations(tr: Any, task: int, epoch: int, metrics: dict[str, Any]) -> None:
    """The plugins' epoch evaluations join ``metrics``; then the selection metric must be
    among them (else the run would silently never select a model)."""
    plugin_metrics(tr, task, task_evaluation(tr, task), metrics,
                   hook=tr.host.hook.clapkit_epoch_evaluate, epoch=epoch)
    want = tr.best.criterion
    if want is not None and want not in metrics:
        produced = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        raise RecipeError(tr.recipe.file, "run.select",
                          f"'{want}' is not a metric this run's evaluations produce",
                          allowed=["last", *produced], got=want)
