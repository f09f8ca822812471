"""Per-item exemplar scores and class-balanced picking, shared by the uncertainty-aware
selectors (CLAP4CLIP ``dataset/exemplars_selection.py``; seed 000 "Uncertainty-Aware
Exemplar Selection").

Every score is computed from ``SelectionInputs`` item by item: ``sample_logits [S,N,C]``
keeps each item's own Monte-Carlo samples on axis 1, so reductions run over axis 0 only
(the reference reshapes a list of ``[S,B,C]`` batches to ``[N,S,C]``, which mixes samples
of different items). ``sample_mask`` (``[S,N,C]`` or ``[S,N]``) excludes padded samples.
"""

from __future__ import annotations

import torch

from clapkit.errors import ClapkitError
from clapkit.interfaces import SelectionInputs, class_quota


def _samples(inputs: SelectionInputs, name: str, need: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[S,N,C]`` float logits and ``[S,N,1]`` weights of the real samples (the mean
    logits as one sample when there are none, unless ``need``).

    ``sample_mask`` may be ``[S,N,C]`` (per class: tasks got different sample counts) or
    ``[S,N]``. A padded entry is replaced by the mean of that item's real samples of that
    class (it then adds no spread), and a sample counts for an item when it is real for
    any of its classes."""
    if inputs.sample_logits is None:
        if need:
            raise ClapkitError(f"selector '{name}' needs Monte-Carlo sample logits "
                               "(run.num_samples > 1 and a sampling text adapter)")
        logits = inputs.logits.float()[None]
        return logits, torch.ones(*logits.shape[:2], 1, dtype=logits.dtype)
    logits = inputs.sample_logits.float()
    mask = inputs.sample_mask
    if mask is None:
        return logits, torch.ones(*logits.shape[:2], 1, dtype=logits.dtype)
    mask = mask.to(logits.device).bool()
    if mask.dim() == 2:
        mask = mask[..., None].expand_as(logits)
    mf = mask.to(logits.dtype)
    mean = (logits * mf).sum(0) / mf.sum(0).clamp_min(1)                # [N,C]
    logits = torch.where(mask, logits, mean.expand_as(logits))
    return logits, mask.any(-1, keepdim=True).to(logits.dtype)


def _mean0(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum(0) / w.sum(0).clamp_min(1)


def energy(inputs: SelectionInputs) -> torch.Tensor:
    """``[N]`` mean over samples of logsumexp over classes (the reference keeps the lowest)."""
    logits, w = _samples(inputs, "energy")
    return _mean0(torch.logsumexp(logits, dim=-1, keepdim=True), w)[:, 0]


def predictive(inputs: SelectionInputs) -> torch.Tensor:
    """``[N,C]`` Monte-Carlo predictive: mean over samples of the softmax."""
    logits, w = _samples(inputs, "entropy")
    return _mean0(torch.softmax(logits, dim=-1), w)


def variance(inputs: SelectionInputs) -> torch.Tensor:
    """``[N]`` sum over classes of the (unbiased) variance of the softmax across samples."""
    logits, w = _samples(inputs, "variance", need=True)
    probs = torch.softmax(logits, dim=-1)
    mean = _mean0(probs, w)
    n = w.sum(0)
    var = ((probs - mean).pow(2) * w).sum(0) / (n - 1).clamp_min(1)
    return var.sum(-1)


def entropy(inputs: SelectionInputs, of: str = "mean_logits") -> torch.Tensor:
    """``[N]`` entropy of ``softmax(mean logits)`` (``of = "mean_logits"``, the reference's
    EntropyExemplarsSelector) or of the Monte-Carlo predictive (``"samples"``: mean over
    samples of the softmax)."""
    p = (torch.softmax(inputs.logits.float(), dim=-1) if of == "mean_logits"
         else predictive(inputs))
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def own_logit(inputs: SelectionInputs) -> torch.Tensor:
    """``[N]`` the mean logit of each item's own class (distance to the boundary)."""
    labels = inputs.labels.long().to(inputs.logits.device)
    return inputs.logits.float().gather(1, labels[:, None])[:, 0]


def ranks(x: torch.Tensor) -> torch.Tensor:
    """0-based rank of each entry in ascending order (ties by position)."""
    order = torch.sort(x, stable=True).indices
    r = torch.empty_like(order)
    r[order] = torch.arange(len(x), device=x.device)
    return r


def pick_lowest(key: torch.Tensor, labels: torch.Tensor, budget: int) -> torch.Tensor:
    """Class-balanced: per class its ``class_quota`` items with the lowest ``key``
    (ties by position); returns sorted positions."""
    labels = labels.cpu().long()
    key = key.detach().cpu().double()
    quota = class_quota(labels, budget)
    if not quota:
        return torch.zeros(0, dtype=torch.long)
    classes, inverse = torch.unique(labels, return_inverse=True)
    want = torch.tensor([quota[int(c)] for c in classes])[inverse]
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(inverse[order], stable=True).indices]     # by class, then key
    grouped = inverse[order]
    rank = torch.arange(len(order)) - torch.searchsorted(grouped, grouped)
    return torch.sort(order[rank < want[order]]).values


def herding(features: torch.Tensor, labels: torch.Tensor, budget: int) -> torch.Tensor:
    """iCaRL herding per class on L2-normalised features, all classes at once: step k adds
    the item that brings the running exemplar mean closest to the class mean."""
    labels = labels.cpu().long()
    quota = class_quota(labels, budget)
    if not quota:
        return torch.zeros(0, dtype=torch.long)
    f = torch.nn.functional.normalize(features.detach().cpu().float(), dim=-1)
    classes, inverse = torch.unique(labels, return_inverse=True)
    k_cls = len(classes)
    counts = torch.bincount(inverse, minlength=k_cls)
    m = int(counts.max())
    order = torch.sort(inverse, stable=True).indices
    pos = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[inverse[order]]
    grid = torch.full((k_cls, m), -1, dtype=torch.long)
    grid[inverse[order], pos] = order
    valid = grid >= 0
    feats = f[grid.clamp_min(0)]                                        # [K,M,D]
    mu = (feats * valid[..., None]).sum(1) / counts[:, None]            # [K,D]
    want = torch.tensor([quota[int(c)] for c in classes])
    taken = torch.zeros_like(valid)
    running = torch.zeros_like(mu)
    for k in range(int(want.max())):
        cand = (running[:, None, :] + feats) / (k + 1)
        dist = (mu[:, None, :] - cand).norm(dim=-1)
        dist = dist.masked_fill(~valid | taken, float("inf"))
        best = dist.argmin(1)                                           # [K]
        active = want > k
        rows = torch.arange(k_cls)[active]
        taken[rows, best[active]] = True
        running[active] += feats[rows, best[active]]
    return torch.sort(grid[taken]).values
