"""Small loss-side helpers shared by several loss plugins.

``mixup_mean`` is the one place where the mixup combination ``lam*L(y_a) + (1-lam)*L(y_b)``
lives, so every classification loss supports mixup the same way (seed 003, section 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ClapkitError


def mixup_mean(per_sample: Callable[[torch.Tensor], torch.Tensor],
               batch: dict[str, Any]) -> torch.Tensor:
    """Batch mean of ``per_sample(labels) -> [B]`` with the mixup combination.

    Without mixup (``label_b`` or ``mix_lam`` absent) this is ``per_sample(label).mean()``.
    With mixup it is ``mean(lam * L(y_a) + (1 - lam) * L(y_b))``; ``mix_lam`` may be a float,
    a 0-dim tensor or a per-sample ``[B]`` tensor.
    """
    la = per_sample(batch["label"])
    label_b, lam = batch.get("label_b"), batch.get("mix_lam")
    if label_b is None or lam is None:
        return la.mean()
    lam_t = torch.as_tensor(lam, dtype=la.dtype, device=la.device)
    return (lam_t * la + (1.0 - lam_t) * per_sample(label_b)).mean()


def classification_logits(outputs: dict[str, Any], over_samples: bool) -> torch.Tensor:
    """``[B,C]`` logits, or the per-sample ``[S,B,C]`` ones when asked and present."""
    if over_samples and outputs.get("sample_logits") is not None:
        return outputs["sample_logits"]
    return outputs["logits"]


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Unreduced CE ``[B]`` for logits ``[B,C]`` or ``[S,B,C]`` (averaged over the S samples).

    ``weight`` ``[C]`` multiplies each sample's loss by the weight of its label (no
    renormalisation by the batch's weight sum, unlike ``F.cross_entropy(weight=...)``).
    """
    c = logits.shape[-1]
    flat = logits.reshape(-1, c)
    lead = logits.shape[:-1]
    loss = F.cross_entropy(flat, labels.expand(lead).reshape(-1), reduction="none")
    loss = loss.view(lead)
    if loss.dim() == 2:
        loss = loss.mean(0)
    if weight is not None:
        loss = loss * weight[labels]
    return loss


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of square matrices ``[..., n, n]`` as ``[..., n*(n-1)]``."""
    n = m.shape[-1]
    mask = ~torch.eye(n, dtype=torch.bool, device=m.device)
    return m[..., mask]


def view_or_text(outputs: dict[str, Any], view: str) -> torch.Tensor:
    """The prompt view ``view`` of the step outputs, or the head's text view when ``""``."""
    if not view:
        return outputs["text"]
    views = outputs.get("views") or {}
    if view not in views:
        raise ClapkitError(f"no prompt view '{view}' in the step outputs "
                           f"(views: {', '.join(views) or 'none'})")
    return views[view]


def checked_class_counts(counts: Sequence[int] | None, num_classes: int,
                         who: str) -> torch.Tensor:
    """Training-set class counts as a float tensor (zeros clamped to 1), or a clear error."""
    if counts is None:
        raise ClapkitError(f"{who} needs the training-set class counts (BuildContext."
                           "class_counts), which this run did not provide")
    if num_classes and len(counts) != num_classes:
        raise ClapkitError(f"{who}: got {len(counts)} class counts for {num_classes} classes")
    t = torch.as_tensor(list(counts), dtype=torch.float64)
    if (t < 0).any():
        raise ClapkitError(f"{who}: class counts must be >= 0, got {list(counts)}")
    return t.clamp_min(1.0)


def step_randn(shape: Sequence[int], like: torch.Tensor, step: Any = None) -> torch.Tensor:
    """Standard-normal noise shaped ``shape`` (dtype and device of ``like``): from the
    evaluation's seeded generator when ``step`` (a StepContext) carries one, else the global
    RNG -- so Monte-Carlo evaluation gives the same figure for the same weights."""
    gen = getattr(step, "generator", None)
    if gen is None:
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)
    if gen.device.type != like.device.type:
        raise ClapkitError(f"evaluation noise generator is on {gen.device}, the tensor on "
                           f"{like.device}")
    out = torch.randn(tuple(shape), dtype=torch.float32, device=like.device, generator=gen)
    return out.to(like.dtype)
