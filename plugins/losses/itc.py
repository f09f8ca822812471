"""`itc`: image-text contrastive loss (CLIP's symmetric InfoNCE; BLIP's ITC).

Plain form (no momentum model, no queue, ``alpha = 0``): with L2-normalised image features
``v [B,D]``, caption features ``t [B,D]`` and the backbone's logit scale ``s``::

    L = (CE(s v t^T, y) + CE(s t v^T, y)) / 2

which is open_clip's ``ClipLoss`` when every caption describes a different image. Several
captions of one image in a batch are all positives: the targets of a row are spread evenly
over the columns of the same image id (BLIP's retrieval fine-tuning), never "same row".

BLIP's additions (seeds 001/004):

* **momentum model**: an exponential moving average of the encoders (``theta_m <- m theta_m
  + (1-m) theta``, m = 0.995) encodes the batch again; online features are contrasted with
  the *momentum* features of the batch and of the queue;
* **feature queue**: the last ``queue_size`` momentum image/caption features and their image
  ids (buffers: they checkpoint and resume), gathered over every DDP rank before enqueueing;
* **soft targets**: ``targets = alpha * softmax(s v_m [t_m, queue]^T) + (1 - alpha) * hard``
  (and the same for text->image), alpha = 0.4, ramped linearly from 0 during the first
  epoch (:func:`ramped_alpha`).

The math lives in functions (:func:`contrastive_targets`, :func:`soft_infonce`,
:func:`itc_loss`) and :class:`ItcObjective` (queue + soft targets); :class:`MomentumCopy`
holds an EMA copy of any module as buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext, Loss
from clapkit.snapshot import frozen_copy
from clapkit.validators import size

from .moco_rank import gather_all

#: open_clip clamps CLIP's logit scale at 100 while training; the loss does the same
MAX_LOGIT_SCALE = 100.0


def id_codes(ids: Sequence[Hashable], device: torch.device | None = None) -> torch.Tensor:
    """Stable 63-bit integer codes of image ids (strings or ints): equal ids -> equal codes
    in every process and every step, so queue entries and other ranks' rows compare."""
    out = []
    for i in ids:
        if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2 ** 62:
            out.append(i)
        else:
            h = hashlib.blake2b(repr(i).encode(), digest_size=8).digest()
            out.append(2 ** 62 + (int.from_bytes(h, "little") >> 2))
    return torch.tensor(out, dtype=torch.long, device=device)


def contrastive_targets(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """``[R,K]`` targets: each row spread evenly over the columns of its own image id.
    A row without any positive column is an error (it has nothing to pull towards)."""
    pos = (row_ids[:, None] == col_ids[None, :]).float()
    n = pos.sum(1, keepdim=True)
    if bool((n == 0).any()):
        raise ValueError("a row has no positive column (its image id is not among the keys)")
    return pos / n


def soft_infonce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_r -sum_k targets[r,k] log softmax(logits[r])_k`` (CE with soft targets)."""
    return -(F.log_softmax(logits.float(), dim=1) * targets).sum(1).mean()


def ramped_alpha(alpha: float, epoch: int, progress: float) -> float:
    """BLIP's soft-target weight: ``alpha * min(1, progress)`` in the first epoch (``progress``
    = fraction of epoch 0 done), ``alpha`` afterwards."""
    return alpha if epoch > 0 else alpha * min(1.0, max(0.0, float(progress)))


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batch(image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The features and ids of every rank in rank order, this rank's own rows kept as the
    autograd tensors they are (open_clip's default ``gather_with_grad = False``): the loss
    every rank then computes is the global one, and the gradient reaching a rank's rows is
    exactly that loss's gradient w.r.t. them. Unchanged in a single process. Every rank must
    hold the same batch size (as open_clip assumes)."""
    if not _distributed():
        return image, text, ids
    dist = torch.distributed
    world, rank = dist.get_world_size(), dist.get_rank()
    parts_v = [torch.empty_like(image) for _ in range(world)]
    parts_t = [torch.empty_like(text) for _ in range(world)]
    parts_i = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(parts_v, image.detach().contiguous())
    dist.all_gather(parts_t, text.detach().contiguous())
    dist.all_gather(parts_i, ids.contiguous())
    parts_v[rank], parts_t[rank] = image, text
    return torch.cat(parts_v), torch.cat(parts_t), torch.cat(parts_i)


def itc_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
             image_ids: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
             gather: bool = False) -> torch.Tensor:
    """The plain symmetric InfoNCE over one batch (features need not be normalised; ids
    default to one image per row). ``gather``: over the global batch of every DDP rank."""
    v, t = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    if gather and _distributed():
        if image_ids is None or text_ids is not None and text_ids is not image_ids:
            raise ValueError("gathered ITC needs one id tensor shared by images and texts")
        v, t, image_ids = gather_batch(v, t, image_ids)
        text_ids = image_ids
    s = torch.as_tensor(logit_scale, dtype=torch.float32, device=v.device).clamp(
        max=MAX_LOGIT_SCALE)
    if image_ids is None:
        image_ids = torch.arange(v.shape[0], device=v.device)
    if text_ids is None:
        text_ids = image_ids
    logits = s * v @ t.t()
    return (soft_infonce(logits, contrastive_targets(image_ids, text_ids))
            + soft_infonce(logits.t(), contrastive_targets(text_ids, image_ids))) / 2


def _first_float_buffer(module: nn.Module) -> torch.Tensor:
    for b in module.buffers():
        if b.is_floating_point():
            return b
    raise ClapkitError(f"momentum copy of {type(module).__name__} holds no weights")


def _buffer_placement(module: nn.Module) -> nn.Module:
    """A module whose ``device``/``dtype`` properties read its parameters (a backbone
    wrapper) has none left once they are buffers: give the copy a subclass that reads them
    from its buffers instead (the copy's own class, nothing else changes)."""
    cls = type(module)
    if not any(isinstance(getattr(cls, a, None), property) for a in ("device", "dtype")):
        return module
    module.__class__ = type(f"Momentum{cls.__name__}", (cls,), {
        "device": property(lambda m: _first_float_buffer(m).device),
        "dtype": property(lambda m: _first_float_buffer(m).dtype)})
    return module


class MomentumCopy(nn.Module):
    """An EMA copy of ``online`` whose weights are *buffers* (checkpointed with the model,
    never trained by a stage glob or an optimizer); call :meth:`update` before using it."""

    def __init__(self, online: nn.Module, momentum: float = 0.995) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum {momentum} outside [0, 1]")
        self.momentum = momentum
        self.model = _buffer_placement(frozen_copy(online)).eval()
        self._online = (online,)                  # a tuple: not registered as a submodule

    @torch.no_grad()
    def update(self) -> None:
        """``theta_m <- m theta_m + (1 - m) theta`` over the online parameters; buffers of the
        online module (norm statistics) are copied."""
        target = dict(self.model.named_buffers())
        online = self._online[0]
        pairs = [(target[n], p.detach()) for n, p in online.named_parameters() if n in target]
        if pairs:
            torch._foreach_lerp_([k for k, _ in pairs], [q.to(k.dtype) for k, q in pairs],
                                 1.0 - self.momentum)
        for n, b in online.named_buffers():
            if n in target:
                target[n].copy_(b)

    def forward(self, *args, **kwargs):
        self.model.eval()
        with torch.no_grad():
            return self.model(*args, **kwargs)


class ItcObjective(nn.Module):
    """ITC with an optional feature queue and soft targets from momentum features.

    ``forward(image, text, ids, scale, image_m, text_m, alpha)``: ``image``/``text`` the online
    features ``[B,D]``, ``ids [B]`` the image id codes (:func:`id_codes`), ``image_m``/
    ``text_m`` the momentum features of the same batch (None: no momentum model -- the keys
    are the online features of the batch plus the queue). In training with gradients the
    batch's key features and ids (of every rank) are enqueued after the loss is formed.
    """

    def __init__(self, dim: int, queue_size: int = 0, seed: int = 0,
                 gather: bool = True) -> None:
        super().__init__()
        self.queue_size, self.gather = queue_size, gather
        if queue_size:
            g = torch.Generator().manual_seed(seed)
            self.register_buffer("queue_image", F.normalize(
                torch.randn(queue_size, dim, generator=g), dim=-1))
            self.register_buffer("queue_text", F.normalize(
                torch.randn(queue_size, dim, generator=g), dim=-1))
            self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> None:
        """FIFO over the oldest entries, out of place (the tensors this step's loss read
        stay intact for backward); the rows of all ranks, in rank order."""
        if not self.queue_size:
            return
        d = image.shape[1]
        keys, ids = gather_all(torch.cat([image, text], 1).detach(), ids.detach())
        k = self.queue_size
        if keys.shape[0] > k:
            keys, ids = keys[-k:], ids[-k:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % k
        self.queue_image = self.queue_image.index_copy(0, idx, keys[:, :d].to(self.queue_image))
        self.queue_text = self.queue_text.index_copy(0, idx, keys[:, d:].to(self.queue_text))
        self.queue_ids = self.queue_ids.index_copy(0, idx, ids.to(self.queue_ids))
        self.queue_ptr = (self.queue_ptr + keys.shape[0]) % k

    def forward(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor,
                logit_scale: torch.Tensor | float, image_m: torch.Tensor | None = None,
                text_m: torch.Tensor | None = None, alpha: float = 0.0) -> torch.Tensor:
        v, t = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
        s = torch.as_tensor(logit_scale, dtype=torch.float32, device=v.device).clamp(
            max=MAX_LOGIT_SCALE)
        momentum = image_m is not None and text_m is not None
        if not momentum and alpha:
            raise ValueError("soft targets (alpha > 0) need the momentum features")
        if not momentum and not self.queue_size:
            return itc_loss(v, t, s, ids, gather=self.gather)
        with torch.no_grad():
            kv = F.normalize(image_m.float(), dim=-1) if momentum else v.detach()
            kt = F.normalize(text_m.float(), dim=-1) if momentum else t.detach()
            all_v, all_t, all_ids = kv, kt, ids
            if self.queue_size:
                all_v = torch.cat([kv, self.queue_image.float()])
                all_t = torch.cat([kt, self.queue_text.float()])
                all_ids = torch.cat([ids, self.queue_ids])
            hard = contrastive_targets(ids, all_ids)
            tgt_i2t = tgt_t2i = hard
            if alpha:
                tgt_i2t = alpha * F.softmax(s * kv @ all_t.t(), 1) + (1 - alpha) * hard
                tgt_t2i = alpha * F.softmax(s * kt @ all_v.t(), 1) + (1 - alpha) * hard
        if momentum:                      # BLIP: online features against momentum keys
            i2t, t2i = s * v @ all_t.t(), s * t @ all_v.t()
        else:                             # no momentum model: the batch's own online columns
            i2t = torch.cat([s * v @ t.t(), s * v @ all_t[v.shape[0]:].t()], 1)
            t2i = torch.cat([s * t @ v.t(), s * t @ all_v[v.shape[0]:].t()], 1)
        loss = (soft_infonce(i2t, tgt_i2t) + soft_infonce(t2i, tgt_t2i)) / 2
        if self.training and torch.is_grad_enabled():
            self.enqueue(kv, kt, ids)
        return loss


# --- the loss plugin -------------------------------------------------------------------------

_v = attrs.validators


@attrs.frozen
class ItcConfig:
    """``momentum_model``: BLIP's EMA copy of the backbone and visual adapters encodes the
    batch again; ``momentum``: its m (0.995); ``queue_size``: momentum features kept as extra
    keys (0 = none; BLIP pretraining 57600); ``alpha``: soft-target weight (BLIP 0.4; needs
    the momentum model); ``alpha_ramp_steps``: training steps over which alpha ramps up from
    0 (BLIP: one epoch; 0 = no ramp); ``gather``: contrast over every DDP rank's batch;
    ``caption_template``: the caption of an item without captions (its class name)."""

    momentum_model: bool = False
    momentum: float = attrs.field(default=0.995, validator=[_v.ge(0.0), _v.le(1.0)])
    queue_size: int = attrs.field(default=0, validator=size(2 ** 20, lo=0))
    alpha: float = attrs.field(default=0.0, validator=[_v.ge(0.0), _v.le(1.0)])
    alpha_ramp_steps: int = attrs.field(default=0, validator=_v.ge(0))
    gather: bool = True
    caption_template: str = "a photo of a {}."

    def __attrs_post_init__(self) -> None:
        if self.alpha and not self.momentum_model:
            raise ValueError("alpha > 0 (soft targets) needs momentum_model = true: the soft "
                             "targets are the momentum model's similarities")


class ItcLoss(Loss):
    """ITC between the step's image features ``z`` and one caption per item."""

    needs = ("z",)

    def __init__(self, cfg: ItcConfig, backbone: nn.Module, class_names: list[str],
                 seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.class_names = cfg, list(class_names)
        self._backbone = (backbone,)            # a reference, not a submodule
        self.objective = ItcObjective(backbone.embed_dim, cfg.queue_size, seed, cfg.gather)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.momentum_backbone: MomentumCopy | None = None
        self.momentum_visual: MomentumCopy | None = None

    def bind(self, pipeline: nn.Module) -> None:
        """The momentum model: EMA copies of the backbone and of the visual adapters."""
        if not self.cfg.momentum_model:
            return
        self.momentum_backbone = MomentumCopy(self._backbone[0], self.cfg.momentum)
        getter = getattr(pipeline, "visual_encoder_modules", None)
        if callable(getter):
            self.momentum_visual = MomentumCopy(getter(), self.cfg.momentum)

    def current_alpha(self) -> float:
        ramp = self.cfg.alpha_ramp_steps
        return self.cfg.alpha * (min(1.0, int(self.steps) / ramp) if ramp else 1.0)

    @torch.no_grad()
    def _momentum_features(self, outputs, batch, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        mb = self.momentum_backbone.model
        streams = batch.get("streams")
        if streams:
            feats = {s: mb.encode_image(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)
                     for s, x in streams.items()}
        else:                                   # cached features: the encoder is frozen
            feats = {s: f.detach() for s, f in outputs["features"].items()}
        if self.momentum_visual is not None:
            self.momentum_visual.model.eval()
            z = self.momentum_visual.model(feats)
        else:
            z = torch.stack([f.mean(1) for f in feats.values()]).mean(0)
        return z, mb.encode_text(tokens)

    def forward(self, outputs, batch) -> torch.Tensor:
        from ._image_text_batch import pooled_text, step_captions

        bb = self._backbone[0]
        captions, ids = step_captions(batch, self.class_names, self.cfg.caption_template,
                                      self.training)
        tokens, text = pooled_text(batch, bb, captions)
        image = outputs["z"]
        learning = self.training and torch.is_grad_enabled()
        image_m = text_m = None
        if self.momentum_backbone is not None:
            if learning:
                self.momentum_backbone.update()
                if self.momentum_visual is not None:
                    self.momentum_visual.update()
            image_m, text_m = self._momentum_features(outputs, batch, tokens)
        alpha = self.current_alpha() if image_m is not None else 0.0
        loss = self.objective(image, text.to(image.device), ids.to(image.device),
                              bb.logit_scale, image_m, text_m, alpha)
        if learning:
            self.steps += 1
        return loss


def build(cfg: ItcConfig, ctx: BuildContext) -> ItcLoss:
    """Image-text contrastive loss (CLIP InfoNCE; BLIP momentum model, queue, soft targets)."""
    if ctx.backbone is None:
        raise ClapkitError("itc needs the backbone (its text tower encodes the captions)")
    return ItcLoss(cfg, ctx.backbone, ctx.class_names, ctx.seed)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "itc", build, config=ItcConfig,
                  test_options=lambda ctx: {"momentum_model": True, "queue_size": 8,
                                            "alpha": 0.4, "alpha_ramp_steps": 2})
