"""attrs classes for the recipe sections the core itself interprets.

Component tables (``[backbone]``, ``[data]``, ``[head]``, ``[prompts.NAME]``, ...) carry
``plugin = "name"``, the core keys of their section (classes ``*Keys`` below) and the plugin's
own options. The other sections are plain configs.
"""

from __future__ import annotations

from typing import Literal

import attrs

_positive = attrs.validators.gt(0)
_non_negative = attrs.validators.ge(0)


# --- core keys of component sections -----------------------------------------------------

@attrs.frozen
class NoKeys:
    """Sections whose tables hold only ``plugin`` and the plugin's options."""


@attrs.frozen
class DataKeys:
    """Loader options of ``[data]`` (the dataset plugin's options sit beside them)."""

    batch_size: int = attrs.field(default=32, validator=_positive)
    eval_batch_size: int | None = None
    num_workers: int = attrs.field(default=0, validator=_non_negative)
    train_split: str = "train"
    valid_split: str | None = "valid"   # the split that selects the best model
    test_split: str | None = None
    weighted_sampler: bool = False      # WeightedRandomSampler by inverse class frequency
    # training reads random frames per segment through the train transform; false = the
    # eval pipeline (segment centres, centre crop) for training too
    augment: bool = True


@attrs.frozen
class AdapterKeys:
    """``streams``: which streams an image/video adapter serves (default: all)."""

    streams: list[str] | None = None


@attrs.frozen
class HeadKeys:
    """``view``: the prompt view the head classifies against (default: the first prompt)."""

    view: str | None = None


@attrs.frozen
class LossKeys:
    """Weight and schedule of one loss term.

    ``w(epoch) = 0`` before ``warmup`` epochs, then ramps linearly to ``weight`` over ``ramp``
    epochs (seed 002's ``--mi-warmup/--mi-ramp``, ``--dc-warmup/--dc-ramp``).
    """

    weight: float = 1.0
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
    name: str = "run"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"                       # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/{name}"
    use_amp: bool = False
    amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"  # auto: bf16 CPU, fp16 CUDA
    grad_clip: float = attrs.field(default=0.0, validator=_non_negative)   # 0 = off
    mixup_alpha: float = attrs.field(default=0.0, validator=_non_negative)  # 0 = off
    num_samples: int = attrs.field(default=1, validator=_positive)  # MC samples (forward_times)
    eval_every: int = attrs.field(default=1, validator=_positive)
    progress: bool = True


@attrs.frozen
class ScenarioConfig:
    """Classes split into tasks; none given = plain training (one task with every class)."""

    task_to_cls_num: list[int] | None = None
    class_order: Literal["given", "shuffled"] = "given"
    class_order_seed: int = 1993


@attrs.frozen
class MemoryConfig:
    size: int = attrs.field(default=0, validator=_non_negative)   # exemplars kept in total


@attrs.frozen
class StageConfig:
    """One training stage: which parameters train (globs over component names), how long."""

    name: str
    train: list[str]
    epochs: int = attrs.field(default=1, validator=_non_negative)
    lr: float = attrs.field(default=1e-3, validator=_positive)
    lr_groups: dict[str, float] = attrs.field(factory=dict)    # glob -> lr override
    optimizer: Literal["sgd", "adamw"] = "adamw"
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "multistep"] = "cosine"
    warmup_epochs: float = attrs.field(default=0.0, validator=_non_negative)
    milestones: list[int] = attrs.field(factory=list)
    gamma: float = 0.1


@attrs.frozen
class CacheConfig:
    """HDF5 feature cache (DESIGN.md section 5)."""

    enabled: Literal["auto", "on", "off"] = "auto"
    dir: str = ".clapkit_cache"
    # augmented views per train item; 1 = train on the eval-transform features (one cache
    # per split), K > 1 = K train-mode views (random frames + train transform), epoch e
    # reads view e % K
    views: int = attrs.field(default=1, validator=_positive)
    batch_size: int = attrs.field(default=64, validator=_positive)
