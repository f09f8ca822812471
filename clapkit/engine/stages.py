"""One training stage's set-up: which parameters train, their optimizer and schedule.

Freezing is real: every parameter a stage does not select gets ``requires_grad = False`` and
is absent from the optimizer, so weight decay or momentum can never move it.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import RecipeError
from ..sections import StageConfig


def glob_matches(pattern: str, name: str) -> bool:
    """``fnmatch`` on the dotted name; a pattern without wildcards also selects its subtree
    (``"head"`` selects ``head.proj.weight``)."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


#: the one placeholder parameter globs may hold
TASK_PLACEHOLDER = "{task}"


def expand_glob(pattern: str, task: int) -> str:
    """``{task}`` in a ``train``/``lr_groups`` glob becomes the current task index (so a
    stage trains only the current task's per-task parameters, e.g. ``adapters.x.task_{task}.*``)."""
    return pattern.replace(TASK_PLACEHOLDER, str(task))


def check_placeholders(stage: StageConfig, *, file: str | None, key: str) -> None:
    """Only ``{task}`` may appear in braces in the stage's globs."""
    for what, globs in (("train", stage.train), ("lr_groups", list(stage.lr_groups))):
        for g in globs:
            rest = g.replace(TASK_PLACEHOLDER, "")
            if "{" in rest or "}" in rest:
                raise RecipeError(file, f"{key}.{what}", f"stage '{stage.name}': '{g}' holds an "
                                  "unknown placeholder; the only one is {task}")


def select_parameters(model: nn.Module, stage: StageConfig, *, file: str | None = None,
                      key: str = "stages", task: int = 0) -> dict[str, nn.Parameter]:
    """Parameters named by ``stage.train`` (globs, ``{task}`` expanded); a glob that selects
    nothing is an error."""
    named = dict(model.named_parameters())
    out: dict[str, nn.Parameter] = {}
    for pattern in (expand_glob(p, task) for p in stage.train):
        hits = [n for n in named if glob_matches(pattern, n)]
        if not hits:
            roots = sorted({n.split(".")[0] + ".*" for n in named} |
                           {".".join(n.split(".")[:2]) + ".*" for n in named})
            raise RecipeError(file, f"{key}.train", f"stage '{stage.name}': '{pattern}' "
                              f"selects no parameter (parameter groups: {', '.join(roots)})")
        out.update({n: named[n] for n in hits})
    return out


def apply_freezing(model: nn.Module, trainable: Iterable[str]) -> None:
    """``requires_grad`` True exactly for the named parameters."""
    keep = set(trainable)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)


def param_groups(params: dict[str, nn.Parameter], stage: StageConfig, *,
                 file: str | None = None, key: str = "stages", task: int = 0) -> list[dict]:
    """Optimizer groups: the first ``lr_groups`` glob matching a name sets its lr; the rest
    use ``stage.lr`` in group ``default``. A ``lr_groups`` glob matching none of the stage's
    parameters is an error (it would silently do nothing)."""
    lrs = {expand_glob(g, task): lr for g, lr in stage.lr_groups.items()}
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in lrs}
    groups["default"] = []
    for n, p in params.items():
        g = next((g for g in lrs if glob_matches(g, n)), "default")
        groups[g].append(p)
    for g in lrs:
        if not groups[g]:
            raise RecipeError(file, f"{key}.lr_groups", f"stage '{stage.name}': '{g}' selects "
                              "none of the parameters this stage trains")
    return [{"params": ps, "lr": lrs.get(g, stage.lr), "name": g}
            for g, ps in groups.items() if ps]


def build_optimizer(groups: list[dict], stage: StageConfig) -> torch.optim.Optimizer:
    """The stage's optimizer (``fused``: torch's fused kernel, else its default)."""
    fused = {"fused": True} if stage.fused else {}
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum,
                               weight_decay=stage.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay, **fused)


def lr_factor(step: int, stage: StageConfig, steps_per_epoch: int) -> float:
    """The lr multiplier after ``step`` optimizer steps.

    The clock ticks per step, or per epoch (``schedule_per = "epoch"``: ``step`` counts whole
    epochs, as Dassl's schedulers). ``warmup = "linear"``: a ramp over ``warmup_epochs``
    (may be fractional), then ``cosine`` to 0 over the remaining ticks. ``"constant"``: the
    lr is ``warmup_lr`` over the warm-up, then the cosine runs over all ``epochs`` from its
    start (Dassl's ConstantWarmupScheduler with WARMUP_RECOUNT: after a 1-epoch warm-up,
    epoch e >= 1 gets ``0.5 (1 + cos(pi (e - 1) / epochs))``). ``multistep``: x ``gamma`` at
    each epoch in ``milestones``; ``none``: constant.
    """
    per_epoch = stage.schedule_per == "epoch"
    tick = step // max(1, steps_per_epoch) if per_epoch else step
    unit = 1 if per_epoch else steps_per_epoch
    total = max(1, stage.epochs * unit)
    warm = int(round(stage.warmup_epochs * unit))
    if tick < warm:
        if stage.warmup == "constant":
            return stage.warmup_lr / stage.lr
        return (tick + 1) / warm
    if stage.scheduler == "cosine":
        if stage.warmup == "constant":
            progress = (tick - warm) / total
        else:
            progress = (tick - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if stage.scheduler == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return stage.gamma ** sum(epoch >= m for m in stage.milestones)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, stage, steps_per_epoch))


def check_stage(stage: StageConfig, *, file: str | None, key: str) -> None:
    """Recipe keys that only make sense together."""
    check_placeholders(stage, file=file, key=key)
    if stage.scheduler != "multistep" and stage.milestones:
        raise RecipeError(file, f"{key}.milestones",
                          f"stage '{stage.name}': milestones need scheduler = \"multistep\" "
                          f"(it is \"{stage.scheduler}\")")
    if stage.optimizer != "sgd" and stage.momentum != 0.9:
        raise RecipeError(file, f"{key}.momentum",
                          f"stage '{stage.name}': momentum applies to optimizer = \"sgd\" only")
    if stage.warmup == "constant" and stage.warmup_epochs <= 0:
        raise RecipeError(file, f"{key}.warmup", f"stage '{stage.name}': warmup = "
                          "\"constant\" needs warmup_epochs > 0 (Dassl's configs: 1)")
    if stage.scheduler != "multistep" and stage.gamma != 0.1:
        raise RecipeError(file, f"{key}.gamma", f"stage '{stage.name}': gamma applies to "
                          "scheduler = \"multistep\" only")
