"""`moco_rank` loss: MoCo-style contrastive ranking with a queue of negatives (seed 003,
section 3).

For every sample, query ``q = normalize(z)``; positive: the text feature of its class (video
vs its correct prompt); negatives: the ``queue_size`` (4096) entries of a FIFO queue.
``L = CE([q.t_y, q.k_1..q.k_K] / temperature, 0)``, mixup-aware through the shared helper.
Queue entries of the sample's own class are masked out (``mask_same_class``), since they are
not negatives.

What is enqueued (``keys``):

* ``"text"`` (default, seed 003: "thousands (4096) of old text features in the queue"): the
  batch's positive text features themselves; no momentum encoder is made.
* ``"momentum"``: MoCo's keys, the embeddings of the batch by a *momentum encoder*
  -- a copy of the pipeline's visual part (image adapters, temporal models, fusion: the module
  ``pipeline.visual_encoder_modules()`` returns, mapping ``features {stream: [B,T,D]} -> z``),
  made in ``bind`` and updated as ``theta_k <- m theta_k + (1-m) theta_q`` before each training
  step's keys are computed. The copy holds its weights as *buffers*: it checkpoints with the
  model, and no stage glob or optimizer can ever train it.

The queue (``queue [K,D]``, ``queue_labels [K]``, ``queue_ptr``) is made of registered buffers
so it checkpoints and resumes; under ``torch.distributed`` the keys of every rank are gathered
before they are enqueued (MoCo's ``concat_all_gather``), so all ranks hold the same queue; it starts as random unit vectors with label -1 (classic MoCo).
It is updated only in training mode with gradients enabled, out of place, so the tensors the
current loss used stay intact for backward. Unbound (no ``bind`` call), momentum keys fall back
to the detached online z.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.functional import mixup_mean, view_or_text
from clapkit.interfaces import BuildContext, Loss
from clapkit.snapshot import frozen_copy
from clapkit.validators import size


@attrs.frozen
class MoCoRankConfig:
    """``queue_size``: negatives kept; ``momentum`` of the key encoder; ``temperature``;
    ``view``: text view of the positives ("" = the head's view); ``keys``: "text" (seed 003)
    or "momentum" (what is enqueued); ``mask_same_class``: ignore queue entries of the label's class;
    ``dim``: feature size (0 = the backbone's embed_dim)."""

    queue_size: int = attrs.field(default=4096, validator=size(2**20))
    momentum: float = attrs.field(default=0.999, validator=[attrs.validators.ge(0.0),
                                                           attrs.validators.le(1.0)])
    temperature: float = attrs.field(default=0.07, validator=attrs.validators.gt(0))
    view: str = ""
    keys: Literal["momentum", "text"] = attrs.field(
        default="text", validator=attrs.validators.in_(("momentum", "text")))
    mask_same_class: bool = True
    dim: int = attrs.field(default=0, validator=size(65_536, lo=0))


def gather_all(keys: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``keys [n,D]`` and ``labels [n]`` of every rank concatenated in rank order (ranks may
    hold different ``n``: padded to the largest for the collective); unchanged alone."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys, labels
    world = dist.get_world_size()
    n = torch.tensor([keys.shape[0]], device=keys.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    top = int(max(int(s) for s in sizes))
    pad_k = keys.new_zeros((top, *keys.shape[1:]))
    pad_k[: keys.shape[0]] = keys
    pad_l = labels.new_full((top,), -1)
    pad_l[: labels.shape[0]] = labels
    all_k = [torch.empty_like(pad_k) for _ in range(world)]
    all_l = [torch.empty_like(pad_l) for _ in range(world)]
    dist.all_gather(all_k, pad_k)
    dist.all_gather(all_l, pad_l)
    return (torch.cat([k[: int(s)] for k, s in zip(all_k, sizes)]),
            torch.cat([lab[: int(s)] for lab, s in zip(all_l, sizes)]))


class MoCoRankLoss(Loss):
    """Contrastive ranking of the class text against a queue of negatives."""

    def __init__(self, cfg: MoCoRankConfig, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        needs = ["z", f"views.{cfg.view}" if cfg.view else "text"]
        if cfg.keys == "momentum":
            needs.append("features")
        self.needs = tuple(needs)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, dim, generator=g),
                                                  dim=-1))
        self.register_buffer("queue_labels", torch.full((cfg.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.momentum_encoder: nn.Module | None = None
        self._online: tuple[nn.Module, ...] = ()

    # -- momentum encoder -------------------------------------------------------------------

    def bind(self, pipeline: nn.Module) -> None:
        """Copy the visual part (``pipeline.visual_encoder_modules()``, or ``pipeline``
        itself when it is such a module) as the momentum encoder."""
        if self.cfg.keys != "momentum":
            return
        getter = getattr(pipeline, "visual_encoder_modules", None)
        online = getter() if callable(getter) else pipeline
        self._online = (online,)
        self.momentum_encoder = frozen_copy(online).eval()

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_k <- m * theta_k + (1 - m) * theta_q`` over the online parameters (and a
        plain copy of the online buffers)."""
        if self.momentum_encoder is None:
            return
        online = self._online[0]
        target = dict(self.momentum_encoder.named_buffers())
        pairs = [(target[n], p.detach()) for n, p in online.named_parameters()]
        if pairs:
            keys = [k for k, _ in pairs]
            torch._foreach_lerp_(keys, [q.to(k.dtype) for k, q in pairs],
                                 1.0 - self.cfg.momentum)
        for n, b in online.named_buffers():
            if n in target:
                target[n].copy_(b)

    # -- queue --------------------------------------------------------------------------------

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """FIFO: write ``keys [n,D]`` over the oldest entries (vectorised, out of place); the
        keys of all ranks, in rank order, when a process group is running."""
        keys, labels = gather_all(keys.detach(), labels.detach())
        k = self.queue.shape[0]
        if keys.shape[0] > k:
            keys, labels = keys[-k:], labels[-k:]
        n = keys.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % k
        self.queue = self.queue.index_copy(0, idx, keys.to(self.queue))
        self.queue_labels = self.queue_labels.index_copy(0, idx, labels.to(self.queue_labels))
        self.queue_ptr = (self.queue_ptr + n) % k

    @torch.no_grad()
    def _keys(self, outputs: dict, positives: torch.Tensor) -> torch.Tensor:
        if self.cfg.keys == "text":
            return F.normalize(positives.detach().float(), dim=-1)
        if self.momentum_encoder is None:
            return F.normalize(outputs["z"].detach().float(), dim=-1)
        self.momentum_encoder.eval()
        feats = {s: f.detach() for s, f in outputs["features"].items()}
        return F.normalize(self.momentum_encoder(feats).float(), dim=-1)

    # -- loss ---------------------------------------------------------------------------------

    def forward(self, outputs, batch) -> torch.Tensor:
        q = F.normalize(outputs["z"].float(), dim=-1)
        text = view_or_text(outputs, self.cfg.view).float()
        if text.dim() == 4:                          # Monte-Carlo text samples: their mean
            text = text.mean(0)
        text = F.normalize(text, dim=-1)
        queue, queue_labels = self.queue.float(), self.queue_labels   # computed in float32
        rows = torch.arange(q.shape[0], device=q.device)

        def positive(y: torch.Tensor) -> torch.Tensor:
            return text[y] if text.dim() == 2 else text[rows, y]

        def per_sample(y: torch.Tensor) -> torch.Tensor:
            l_pos = (q * positive(y)).sum(-1, keepdim=True)                  # [B,1]
            l_neg = q @ queue.t()                                            # [B,K]
            if self.cfg.mask_same_class:
                l_neg = l_neg.masked_fill(queue_labels.unsqueeze(0) == y.unsqueeze(1),
                                          float("-inf"))
            logits = torch.cat([l_pos, l_neg], dim=1) / self.cfg.temperature
            return F.cross_entropy(logits, torch.zeros_like(y), reduction="none")

        loss = mixup_mean(per_sample, batch)
        if self.training and torch.is_grad_enabled():
            self.momentum_update()
            self.enqueue(self._keys(outputs, positive(batch["label"])), batch["label"])
        return loss


def build(cfg: MoCoRankConfig, ctx: BuildContext) -> MoCoRankLoss:
    """MoCo-style contrastive ranking: class text vs a queue of 4096 negatives."""
    dim = cfg.dim
    if not dim:
        if ctx.backbone is None:
            raise ClapkitError("moco_rank needs the backbone (for embed_dim) or an explicit dim")
        dim = ctx.embed_dim
    return MoCoRankLoss(cfg, dim, ctx.seed)


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "moco_rank", build, config=MoCoRankConfig,
                  test_options=lambda ctx: {"queue_size": 32})
