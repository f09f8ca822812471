"""Train and evaluation epochs: AMP, gradient clipping, mixup, logit restriction, metrics.

The loop is model-agnostic: it moves a batch to the device, remaps dataset labels to class
order positions, optionally mixes it, runs the (possibly DDP-wrapped) pipeline and its losses,
and accumulates a confusion matrix and the loss terms (all reduced over ranks).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import ClapkitError
from ..interfaces import StepContext
from ..metrics import ClassificationMeter
from ..progress import progress_off
from .distributed import DistInfo, all_reduce_sum
from .guard import check_grad_norm, check_loss


# --- AMP ------------------------------------------------------------------------------------

@attrs.frozen
class AmpPolicy:
    """``torch.autocast`` settings: bf16 on CPU; on CUDA fp16 with a GradScaler (or bf16)."""

    enabled: bool = False
    device_type: str = "cpu"
    dtype: torch.dtype = torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16


def amp_policy(use_amp: bool, amp_dtype: str, device: torch.device) -> AmpPolicy:
    """``amp_dtype = "auto"``: bfloat16 on CPU (CPU autocast's fast path), float16 on CUDA."""
    if amp_dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    else:
        dtype = getattr(torch, amp_dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise ClapkitError("run.amp_dtype = \"float16\" needs a CUDA device; on CPU use "
                           "\"bfloat16\" or \"auto\"")
    return AmpPolicy(enabled=use_amp, device_type=device.type, dtype=dtype)


def make_scaler(policy: AmpPolicy) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(policy.device_type) if policy.needs_scaler else None


# --- batches --------------------------------------------------------------------------------

def to_device(batch: dict[str, Any], device: torch.device,
              remap: torch.Tensor) -> dict[str, Any]:
    """Tensors to ``device`` (nested dicts too); ``label`` becomes the class-order position
    (``label_raw`` keeps the dataset's label); ``tasks_present`` is left to the caller."""
    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    out = {k: move(v) for k, v in batch.items()}
    out["label_raw"] = out["label"]
    out["label"] = remap.to(device)[out["label"]]
    return out


def mix_batch(batch: dict[str, Any], alpha: float, rng: np.random.Generator,
              gen: torch.Generator) -> dict[str, Any]:
    """Mixup (Zhang et al.): ``x = lam*x + (1-lam)*x[perm]`` with ``lam ~ Beta(alpha, alpha)``.

    Mixes cached ``features`` when the batch has them, else the pixel ``streams`` (every
    stream with the same ``lam`` and permutation). Sets ``label_b`` = ``label[perm]`` and
    ``mix_lam``; losses combine ``lam*L(label) + (1-lam)*L(label_b)`` (seed 003, section 4).
    """
    lam = float(rng.beta(alpha, alpha))
    n = batch["label"].shape[0]
    perm = torch.randperm(n, generator=gen).to(batch["label"].device)
    key = "features" if batch.get("features") is not None else "streams"
    out = dict(batch)
    out[key] = {s: lam * x + (1.0 - lam) * x[perm] for s, x in batch[key].items()}
    out["label_b"] = batch["label"][perm]
    out["mix_lam"] = lam
    return out


def restrict_logits(outputs: dict[str, Any], seen: int | None) -> dict[str, Any]:
    """Incremental scenarios: classes not seen yet (positions >= ``seen``) get -inf logits."""
    if seen is None:
        return outputs
    out = dict(outputs)
    for key in ("logits", "sample_logits"):
        x = out.get(key)
        if x is not None and x.shape[-1] > seen:
            x = x.clone()
            x[..., seen:] = -math.inf
            out[key] = x
    return out


def tasks_present(labels: torch.Tensor, task_of_class: torch.Tensor) -> torch.Tensor:
    return torch.unique(task_of_class.to(labels.device)[labels])


# --- epochs ---------------------------------------------------------------------------------

@attrs.define
class EpochStats:
    meter: ClassificationMeter
    terms: dict[str, float] = attrs.field(factory=dict)
    grad_norm: float = math.nan        # mean total gradient norm before clipping
    steps: int = 0
    lrs: list[float] = attrs.field(factory=list)   # per param group, as used by the last step
    skipped: int = 0                   # batches whose loss reached no trainable parameter


@attrs.frozen
class StepConfig:
    """What a training epoch needs besides the model and data."""

    device: torch.device
    remap: torch.Tensor
    task_of_class: torch.Tensor
    num_classes: int
    seen: int | None = None            # restrict logits to classes [0, seen)
    task: int = 0                      # the current task (0-based)
    num_samples: int = 1               # Monte-Carlo samples (run.num_samples)
    amp: AmpPolicy = AmpPolicy()
    grad_clip: float = 0.0
    mixup_alpha: float = 0.0
    mix_seed: int = 0
    progress: bool = False
    desc: str = ""
    where: str = ""                    # "task 0, stage 'prompts', epoch 1/3" for messages
    eval_seed: int = 0                 # seeds each evaluation's noise (StepContext.generator)


def step_context(cfg: StepConfig, epoch: int, label: torch.Tensor | None,
                 training: bool, generator: torch.Generator | None = None) -> StepContext:
    """Where this batch is (``batch["step"]``): task, seen classes, epoch, samples; at train
    time also the labels and the tasks present in the batch, at eval time the evaluation's
    noise ``generator``."""
    toc = cfg.task_of_class.to(cfg.device)
    if training and label is not None:
        return StepContext(task=cfg.task, seen_classes=cfg.seen, epoch=epoch,
                           num_samples=cfg.num_samples, training=True, task_of_class=toc,
                           tasks_present=tasks_present(label, toc), label=label)
    return StepContext(task=cfg.task, seen_classes=cfg.seen, epoch=epoch,
                       num_samples=cfg.num_samples, training=False, task_of_class=toc,
                       generator=generator)


def eval_generator(cfg: StepConfig, info: DistInfo) -> torch.Generator:
    """One evaluation's noise source: seeded from ``cfg.eval_seed`` (and the rank, so shards
    do not share draws), independent of the global RNG, hence of what ran before."""
    g = torch.Generator(device=cfg.device)
    g.manual_seed(int(cfg.eval_seed) * 1_000_003 + info.rank)
    return g


def _bar(loader: Iterable, cfg: StepConfig, info: DistInfo) -> Any:
    return tqdm(loader, desc=cfg.desc, leave=False, dynamic_ncols=True,
                disable=progress_off(cfg.progress and info.is_main))


class TrainStep(nn.Module):
    """The pipeline's forward, the logits restricted to the seen classes and the losses in
    *one* forward: wrapped in ``DistributedDataParallel`` it lets DDP see every parameter
    the loss terms reach -- trainable loss parameters (a learned temperature, ...) would
    otherwise get rank-local gradients and drift apart across ranks."""

    def __init__(self, pipeline: nn.Module) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, batch: dict[str, Any], epoch: int,
                seen: int | None) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
        outputs = restrict_logits(self.pipeline(batch), seen)
        total, terms = self.pipeline.compute_losses(outputs, batch, epoch)
        return outputs, total, terms


def train_epoch(model: nn.Module, pipeline: nn.Module, loader: Iterable,
                optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: torch.amp.GradScaler | None, epoch: int, cfg: StepConfig,
                info: DistInfo) -> EpochStats:
    """One pass over ``loader``; ``model`` is the pipeline or its DDP wrapper, ``epoch`` the
    0-based epoch of the stage (loss schedules read it). The scheduler steps per batch."""
    model.train()
    if not pipeline.backbone_trainable():
        # frozen CLIP weights keep their eval behaviour, also when gradients pass through
        # the encoder to deep vision prompts (MaPLe)
        pipeline.backbone.eval()
    refresh = getattr(pipeline, "refresh_each_step", False)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    meter = ClassificationMeter(cfg.num_classes, cfg.device)
    rng = np.random.default_rng(cfg.mix_seed)
    gen = torch.Generator().manual_seed(cfg.mix_seed)
    term_sums: dict[str, float] = {}
    norms: list[float] = []
    count = 0
    skipped = 0
    last_lrs = [g["lr"] for g in optimizer.param_groups]
    bar = _bar(loader, cfg, info)
    for step_i, raw in enumerate(bar, start=1):
        batch = to_device(raw, cfg.device, cfg.remap)
        batch["epoch"] = epoch
        batch["step"] = step_context(cfg, epoch, batch["label"], training=True)
        if cfg.mixup_alpha > 0:
            batch = mix_batch(batch, cfg.mixup_alpha, rng, gen)
        if refresh:
            pipeline.refresh_prompts()
        with cfg.amp.autocast():
            if isinstance(getattr(model, "module", model), TrainStep):
                outputs, total, terms = model(batch, epoch, cfg.seen)
            else:
                outputs = restrict_logits(model(batch), cfg.seen)
                total, terms = pipeline.compute_losses(outputs, batch, epoch)
        where = f"{cfg.where or cfg.desc}, step {step_i}"
        check_loss(total, terms, where)          # NaN/inf stops the run before any step
        if total.requires_grad:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
            else:
                total.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            norms.append(float(nn.utils.clip_grad_norm_(params, max_norm)))
            if scaler is None:                   # a scaler skips inf steps by design
                check_grad_norm(norms[-1], terms, where)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        else:
            # no term that reaches a trainable parameter is on yet (e.g. the only such loss
            # is still in its warmup): nothing to step; the schedule still advances
            skipped += 1
        last_lrs = [g["lr"] for g in optimizer.param_groups]
        with warnings.catch_warnings():   # a skipped step still advances the schedule
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            scheduler.step()
        n = int(batch["label"].shape[0])
        count += n
        for k, v in terms.items():
            term_sums[k] = term_sums.get(k, 0.0) + float(v) * n
        if outputs.get("logits") is not None:    # classification is one objective of many
            meter.update(outputs["logits"].float(), batch["label"])
        if bar.disable is False:
            acc = float(meter.confusion.diagonal().sum()) / max(1, meter.count)
            shown = terms["total"] if "total" in terms else float(total.detach())
            bar.set_postfix(loss=f"{shown:.3f}", acc=f"{acc:.3f}")
    stats = EpochStats(meter=meter, steps=len(norms) + skipped, lrs=last_lrs, skipped=skipped)
    keys = sorted(term_sums)
    vec = torch.tensor([term_sums[k] for k in keys] + [float(count), sum(norms), len(norms)],
                       dtype=torch.float64, device=cfg.device)
    all_reduce_sum(vec, info)
    all_reduce_sum(meter.confusion, info)
    total_n = max(1.0, float(vec[len(keys)]))
    stats.terms = {k: float(vec[i]) / total_n for i, k in enumerate(keys)}
    stats.grad_norm = float(vec[-2] / vec[-1]) if float(vec[-1]) else math.nan
    return stats


@attrs.define
class Collected:
    """Per-item outputs gathered by :func:`evaluate` with ``collect=True`` (this rank's).

    ``sample_logits`` ``[S,N,C]`` is padded to the largest sample count of any batch;
    ``sample_mask`` ``[S,N,C]`` (bool) marks the real samples then (None when every batch
    had the same count and no ragged allocation). ``raw``: per-stream frame-mean backbone
    features ``{s: [N,D]}``.
    """

    index: torch.Tensor
    label: torch.Tensor
    z: torch.Tensor
    logits: torch.Tensor
    sample_logits: torch.Tensor | None = None
    sample_mask: torch.Tensor | None = None
    raw: dict[str, torch.Tensor] = attrs.field(factory=dict)


def pad_samples(parts: list[torch.Tensor], masks: list[torch.Tensor | None]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate per-batch ``[S_b,B_b,C]`` sample logits along items, padding to the
    largest ``S`` with zeros; the mask ``[S,N,C]`` marks the real samples (None when no
    batch was ragged). ``masks[b]`` is the batch's ``[S_b,C]`` or ``[S_b,B_b,C]`` mask."""
    s_max = max(p.shape[0] for p in parts)
    ragged = any(m is not None for m in masks) or any(p.shape[0] != s_max for p in parts)
    padded, mask_parts = [], []
    for p, m in zip(parts, masks):
        s, b, c = p.shape
        padded.append(torch.nn.functional.pad(p, (0, 0, 0, 0, 0, s_max - s)))
        if ragged:
            real = (torch.ones(s, b, c, dtype=torch.bool) if m is None
                    else (m.bool()[:, None, :] if m.dim() == 2 else m.bool()).expand(s, b, c))
            mask_parts.append(torch.nn.functional.pad(real, (0, 0, 0, 0, 0, s_max - s)))
    out = torch.cat(padded, dim=1)
    return out, (torch.cat(mask_parts, dim=1) if ragged else None)


@torch.no_grad()
def evaluate(pipeline: nn.Module, loader: Iterable, cfg: StepConfig, info: DistInfo,
             collect: bool = False, on_outputs: Any = None
             ) -> tuple[ClassificationMeter, Collected | None]:
    """Confusion matrix over ``loader`` (summed over ranks); optionally the per-item ``z``,
    raw features, logits and sample logits (for the exemplar selector and task views).
    ``on_outputs(batch, outputs)`` sees every batch's (restricted) outputs."""
    pipeline.eval()
    meter = ClassificationMeter(cfg.num_classes, cfg.device)
    generator = eval_generator(cfg, info)
    parts: dict[str, list[Any]] = {"index": [], "label": [], "z": [], "logits": [],
                                   "sample_logits": [], "sample_mask": [], "raw": []}
    for raw in _bar(loader, cfg, info):
        batch = to_device(raw, cfg.device, cfg.remap)
        batch["step"] = step_context(cfg, 0, None, training=False, generator=generator)
        with cfg.amp.autocast():
            outputs = restrict_logits(pipeline(batch), cfg.seen)
        logits = outputs["logits"].float() if outputs.get("logits") is not None else None
        if logits is not None:
            meter.update(logits, batch["label"])
        if on_outputs is not None:
            on_outputs(batch, outputs)
        if collect:
            parts["index"].append(batch["index"].cpu())
            parts["label"].append(batch["label"].cpu())
            parts["z"].append(outputs["z"].float().cpu())
            if logits is not None:
                parts["logits"].append(logits.cpu())
            parts["raw"].append({s: f.float().cpu() for s, f in outputs.get("raw", {}).items()})
            if outputs.get("sample_logits") is not None:
                parts["sample_logits"].append(outputs["sample_logits"].float().cpu())
                m = outputs.get("sample_mask")
                parts["sample_mask"].append(None if m is None else m.cpu())
    all_reduce_sum(meter.confusion, info)
    if not collect:
        return meter, None
    if not parts["index"]:
        empty = torch.zeros(0, dtype=torch.long)
        return meter, Collected(index=empty, label=empty, z=torch.zeros(0, 0),
                                logits=torch.zeros(0, cfg.num_classes))
    sl, sm = (pad_samples(parts["sample_logits"], parts["sample_mask"])
              if parts["sample_logits"] else (None, None))
    raws = {s: torch.cat([r[s] for r in parts["raw"]]) for s in parts["raw"][0]}
    return meter, Collected(index=torch.cat(parts["index"]), label=torch.cat(parts["label"]),
                            z=torch.cat(parts["z"]),
                            logits=(torch.cat(parts["logits"]) if parts["logits"]
                                    else torch.zeros(0, cfg.num_classes)),
                            sample_logits=sl, sample_mask=sm, raw=raws)
