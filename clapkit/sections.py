"""attrs classes for the recipe sections the core itself interprets.

Component tables (``[backbone]``, ``[data]``, ``[head]``, ``[prompts.NAME]``, ...) carry
``plugin = "name"``, the core keys of their section (classes ``*Keys`` below) and the plugin's
own options. The other sections are plain configs.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import attrs

from . import validators as v

log = logging.getLogger("clapkit.recipe")

_positive = v.positive()
_non_negative = v.non_negative()


def available_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-pinned sets included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _bounded_workers(value: object) -> object:
    """``data.num_workers`` above the machine's CPUs is clamped with a warning (each
    worker is a process holding a copy of the dataset: 100000 of them exhaust memory)."""
    cpus = available_cpus()
    if isinstance(value, int) and not isinstance(value, bool) and value > cpus:
        log.warning("data.num_workers = %d exceeds the %d CPUs available; using %d",
                    value, cpus, cpus)
        return cpus
    return value


# --- core keys of component sections -----------------------------------------------------

@attrs.frozen
class NoKeys:
    """Sections whose tables hold only ``plugin`` and the plugin's options."""


@attrs.frozen
class DataKeys:
    """Loader options of ``[data]`` (the dataset plugin's options sit beside them)."""

    batch_size: int = attrs.field(default=32, validator=v.size(v.MAX_BATCH))
    eval_batch_size: int | None = attrs.field(default=None,
                                              validator=v.size(v.MAX_BATCH, optional=True))
    # clamped to the CPUs available (with a warning)
    num_workers: int = attrs.field(default=0, converter=_bounded_workers,
                                   validator=_non_negative)
    train_split: str = attrs.field(default="train", validator=v.non_empty)
    valid_split: str | None = attrs.field(default="valid", validator=v.non_empty)  # selects best
    test_split: str | None = attrs.field(default=None, validator=v.non_empty)
    #: > 0: hold this fraction of each class's train items out of training as the selection
    #: split, named by ``valid_split = "held_out"`` (never the test split); the task-end
    #: figures then come from ``test_split``
    valid_fraction: float = attrs.field(default=0.0, validator=v.number(0.0, 0.9))
    weighted_sampler: bool = False      # WeightedRandomSampler by inverse class frequency
    # training reads random frames per segment through the train transform; false = the
    # eval pipeline (segment centres, centre crop) for training too
    augment: bool = True


@attrs.frozen
class AdapterKeys:
    """``streams``: which streams an image/video adapter serves (default: all).
    ``run_order``: adapters of one place (e.g. the image adapters of a stream) run in
    ascending ``run_order``; equal values keep the recipe's table order (after ``extends`` merging, where
    a table added by the extending recipe comes last)."""

    streams: list[str] | None = attrs.field(default=None, validator=v.each(v.non_empty,
                                                                            min_len=1))
    run_order: int = attrs.field(default=0, validator=v.number(-1000, 1000))


@attrs.frozen
class HeadKeys:
    """``view``: the prompt view the head classifies against (default: the first prompt)."""

    view: str | None = attrs.field(default=None, validator=v.non_empty)


@attrs.frozen
class LossKeys:
    """Weight and schedule of one loss term.

    ``w(epoch) = 0`` before ``warmup`` epochs, then ramps linearly to ``weight`` over ``ramp``
    epochs (seed 002's ``--mi-warmup/--mi-ramp``, ``--dc-warmup/--dc-ramp``).
    """

    weight: float = attrs.field(default=1.0, validator=_non_negative)
    warmup: int = attrs.field(default=0, validator=_non_negative)
    ramp: int = attrs.field(default=0, validator=_non_negative)

    def weight_at(self, epoch: int) -> float:
        """The weight in (0-based) ``epoch`` of the current stage."""
        if epoch < self.warmup:
            return 0.0
        if self.ramp <= 0:
            return self.weight
        return self.weight * min(1.0, (epoch - self.warmup + 1) / self.ramp)


# --- plain sections ------------------------------------------------------------------------

@attrs.frozen
class RunConfig:
    name: str = attrs.field(default="run", validator=v.name)   # a name, never a path
    seed: int = attrs.field(default=0, validator=v.number(0, v.MAX_SEED))
    deterministic: bool = False
    device: str = attrs.field(default="auto", validator=v.choice_pattern(
        r"auto|cpu|mps|cuda(:\d+)?", ["auto", "cpu", "cuda", "cuda:N", "mps"]))
    out_dir: str = attrs.field(default="runs/{name}", validator=v.non_empty)
    use_amp: bool = False
    amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"  # auto: bf16 CPU, fp16 CUDA
    grad_clip: float = attrs.field(default=0.0, validator=_non_negative)   # 0 = off
    mixup_alpha: float = attrs.field(default=0.0, validator=_non_negative)  # 0 = off
    num_samples: int = attrs.field(default=1, validator=v.number(1, 10_000))  # forward_times
    eval_every: int = attrs.field(default=1, validator=_positive)
    progress: bool = True
    #: the metric that selects a task's model (``best.pt``) among its evaluated epochs:
    #: "auto" (valid UAR when a single-task recipe classifies; no selection in an
    #: incremental run: the end-of-task model, as the papers), "last" (no selection), or a metric
    #: name an evaluation produces, e.g. "valid/war" or a plugin's "valid/i2t_r1"
    select: str = attrs.field(default="auto", validator=v.non_empty)
    #: torch's intra-op CPU threads for the run (``clapkit run --threads``); 0 = torch's own
    #: default (one per core). 1 by default: the models clapkit trains on CPU are small, and
    #: a second OpenMP thread on a loaded machine spins instead of working (a CoOp step was
    #: measured 38x slower with two threads on a busy 2-core machine); the thread count also
    #: changes the order of float sums, so a fixed default keeps figures reproducible
    threads: int = attrs.field(default=1, validator=v.number(0, 1024))


@attrs.frozen
class ScenarioConfig:
    """Classes split into tasks; none given = plain training (one task with every class)."""

    task_to_cls_num: list[int] | None = attrs.field(default=None,
                                                   validator=v.each(_positive, min_len=1))
    class_order: Literal["given", "shuffled"] = "given"
    class_order_seed: int = attrs.field(default=1993, validator=v.number(0, v.MAX_SEED))


@attrs.frozen
class MemoryConfig:
    # exemplars kept in total (each one a stored item)
    size: int = attrs.field(default=0, validator=v.size(10_000_000, lo=0))


@attrs.frozen
class StageConfig:
    """One training stage: which parameters train (globs over component names), how long."""

    name: str = attrs.field(validator=v.name)
    train: list[str] = attrs.field(validator=v.each(v.non_empty, min_len=1))
    epochs: int = attrs.field(default=1, validator=v.number(0, 1_000_000))
    lr: float = attrs.field(default=1e-3, validator=_positive)
    lr_groups: dict[str, float] = attrs.field(factory=dict,     # glob -> lr override
                                              validator=v.each(_positive))
    optimizer: Literal["sgd", "adamw"] = "adamw"
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    momentum: float = attrs.field(default=0.9, validator=v.number(0, 1, hi_open=True))
    scheduler: Literal["none", "cosine", "multistep"] = "cosine"
    warmup_epochs: float = attrs.field(default=0.0, validator=_non_negative)
    #: "linear": the lr rises from ~0 to ``lr`` over the warm-up; "constant": it stays at
    #: ``warmup_lr`` (Dassl's ConstantWarmupScheduler, CoOp/CoCoOp/MaPLe configs: 1 epoch at
    #: 1e-5), then the schedule starts from ``lr`` as if the warm-up had not been there
    warmup: Literal["linear", "constant"] = "linear"
    warmup_lr: float = attrs.field(default=1e-5, validator=_positive)
    #: the schedule's clock: every optimizer step, or once per epoch (Dassl steps per epoch)
    schedule_per: Literal["step", "epoch"] = "step"
    milestones: list[int] = attrs.field(factory=list, validator=[v.each(_non_negative),
                                                                 v.increasing])
    gamma: float = attrs.field(default=0.1, validator=v.number(0, 1, lo_open=True))
    # -- continual learning: when the stage runs and on what (DESIGN.md section 4) --
    # tasks: "all" | "first" (task 0 only) | "later" (every task but the first) |
    #        "from:K" (tasks K, K+1, ...) | "only:K" (task K alone); tasks are 0-based
    tasks: str = attrs.field(default="all", validator=v.choice_pattern(
        r"all|first|later|from:\d+|only:\d+", ["all", "first", "later", "from:K", "only:K"]))
    # data: the new task's items plus the replay memory, the memory alone, or the task alone
    data: Literal["task+memory", "memory", "task"] = "task+memory"
    # sampler: "auto" follows data.weighted_sampler; "shuffle" a fresh permutation per
    # epoch, "weighted" draws with replacement by inverse class frequency, "class_balanced"
    # draws the same number of items (the smallest class count) from every class each epoch
    sampler: Literal["auto", "shuffle", "class_balanced", "weighted"] = "auto"
    # after_memory: run after the replay-memory update of the task (CLAP4CLIP's
    # class-balanced finetuning), instead of before it
    after_memory: bool = False
    # losses: the [losses.NAME] terms this stage computes (empty: all of them); e.g. a
    # contrastive stage, then one that adds the grounded objectives
    losses: list[str] = attrs.field(factory=list, validator=v.each(v.non_empty))
    # split: the dataset split this stage trains on ("" = data.train_split); e.g. a stage
    # that fine-tunes on a curated subset after pre-training on everything. Its items are
    # that split's, so it cannot mix in the replay memory (train-split items)
    split: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    # fused: the optimizer's fused kernel (torch ``fused=True``): one kernel per step instead
    # of a loop over the tensors -- the same update up to float rounding, ~5x faster steps
    # on CPU for the tiny CLIP (most of its weights are the 49k-row token embedding)
    fused: bool = False

    def runs_in(self, task: int) -> bool:
        """Whether this stage trains in (0-based) ``task``."""
        kind, _, k = self.tasks.partition(":")
        if kind == "all":
            return True
        if kind == "first":
            return task == 0
        if kind == "later":
            return task > 0
        if kind == "from":
            return task >= int(k)
        return task == int(k)


@attrs.frozen
class CacheConfig:
    """HDF5 feature cache (DESIGN.md section 5)."""

    enabled: Literal["auto", "on", "off"] = "auto"
    dir: str = attrs.field(default=".clapkit_cache", validator=v.non_empty)
    # augmented views per train item; 1 = train on the eval-transform features (one cache
    # per split), K > 1 = K train-mode views (random frames + train transform), epoch e
    # reads view e % K
    # each view is one more pass over the train split written to the cache
    views: int = attrs.field(default=1, validator=v.size(1_000))
    batch_size: int = attrs.field(default=64, validator=v.size(v.MAX_BATCH))
