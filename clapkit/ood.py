"""Novel-class (OOD) detection after each task: confidence scores and their ranking metrics.

After task t, the in-distribution (ID) items are the test items of the tasks seen so far and
the out-of-distribution (OOD) items those of the future tasks, all classified against the seen
classes only. A detector flags an item as novel when its *confidence* is low; each score
below is oriented so that **higher = more in-distribution**, and the metrics treat ID as the
positive class (AUROC, AUPR-In, FPR at 95 % TPR of ID; the reference's ``get_measures``
convention):

* ``energy``: ``logsumexp_c mean_s logits`` (the negative free energy, Liu et al. 2020);
* ``msp``: the maximum softmax probability of the MC-averaged logits (Hendrycks & Gimpel);
* ``variance``: minus the variance of the logits over the Monte-Carlo samples, summed over
  the seen classes (CLAP4CLIP's ``variance`` confidence; only with samples);
* ``entropy``: minus the entropy of the softmax of the MC-averaged logits.

Ragged sample counts (tasks got different numbers of samples) come with a ``sample_mask``:
``[S,C]`` (per class, the :class:`~clapkit.interfaces.HeadOutput` convention) or
``[S,B,C]``; only real samples enter the variance. The averaged ``logits`` are taken as
given (the head averages over real samples already).

Use: per batch ``scores = ood_scores(...)`` (``[B]`` per name, vectorised), then
:class:`NoveltyMeter` keeps the ID/OOD scores and :func:`ood_table` gives
``{score: {"auroc", "aupr", "fpr95"}}``; :func:`flat_ood_metrics` names them
``ood/<score>/<metric>`` for ``metrics.jsonl``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .metrics import aupr, auroc, fpr95

__all__ = ["SCORES", "OOD_METRICS", "ood_scores", "ood_table", "flat_ood_metrics",
           "NoveltyMeter"]

#: every score name, in report order
SCORES: tuple[str, ...] = ("energy", "msp", "variance", "entropy")
#: the ranking metrics of each score, in report order
OOD_METRICS: tuple[str, ...] = ("auroc", "aupr", "fpr95")


def _restrict(x: torch.Tensor, seen: int | None) -> torch.Tensor:
    return x if seen is None else x[..., :seen]


def _mask3(mask: torch.Tensor, s: int, b: int, c: int) -> torch.Tensor:
    """A ``[S,C]`` or ``[S,B,C]`` sample mask as a broadcastable ``[S,B|1,C]`` bool."""
    if mask.dim() == 2:
        if mask.shape != (s, c):
            raise ValueError(f"sample_mask [S,C] has shape {tuple(mask.shape)}, expected "
                             f"{(s, c)}")
        return mask.bool()[:, None, :]
    if mask.dim() == 3 and mask.shape == (s, b, c):
        return mask.bool()
    raise ValueError(f"sample_mask must be [S,C] {(s, c)} or [S,B,C] {(s, b, c)}, got "
                     f"{tuple(mask.shape)}")


def sample_variance(sample_logits: torch.Tensor,
                    sample_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased variance over the real samples of each logit ``[S,B,C] -> [B,C]`` (0 where a
    class has fewer than two real samples)."""
    s, b, c = sample_logits.shape
    x = sample_logits.double()
    if sample_mask is None:
        return x.var(dim=0, correction=1) if s > 1 else x.new_zeros(b, c)
    w = _mask3(sample_mask.to(x.device), s, b, c).double().expand(s, b, c)
    n = w.sum(0)
    mean = (x * w).sum(0) / n.clamp_min(1)
    ss = (((x - mean) ** 2) * w).sum(0)
    return torch.where(n > 1, ss / (n - 1).clamp_min(1), torch.zeros_like(ss))


@torch.no_grad()
def ood_scores(logits: torch.Tensor, sample_logits: torch.Tensor | None = None,
               sample_mask: torch.Tensor | None = None, seen: int | None = None
               ) -> dict[str, torch.Tensor]:
    """Confidence scores ``{name: [B]}`` (float64, higher = more in-distribution).

    ``logits`` ``[B,C]`` (MC-averaged), ``sample_logits`` ``[S,B,C]``, ``seen``: keep the
    first ``seen`` classes (the engine sets the unseen ones to ``-inf``). ``variance`` is
    present only with sample logits.
    """
    if logits.dim() != 2:
        raise ValueError(f"expected logits [B,C], got shape {tuple(logits.shape)}")
    x = _restrict(logits.detach(), seen).double()
    if bool(torch.isinf(x).all(dim=1).any()):
        raise ValueError("an item has no finite logit (pass seen= to drop unseen classes)")
    logp = torch.log_softmax(x, dim=1)
    p = logp.exp()
    out = {"energy": torch.logsumexp(x, dim=1),
           "msp": p.amax(dim=1),
           # -H = sum p log p; xlogy-style: 0 * log 0 = 0 for -inf logits
           "entropy": torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=1)}
    if sample_logits is not None:
        if sample_logits.dim() != 3 or sample_logits.shape[1:] != logits.shape:
            raise ValueError(f"sample_logits must be [S,B,C] with [B,C] = "
                             f"{tuple(logits.shape)}, got {tuple(sample_logits.shape)}")
        sl = _restrict(sample_logits.detach(), seen)
        mask = None if sample_mask is None else _restrict(sample_mask, seen)
        var = sample_variance(sl, mask)
        out["variance"] = -var.nan_to_num(nan=0.0, posinf=0.0).sum(dim=1)
    return {k: out[k] for k in SCORES if k in out}


def ood_table(id_scores: dict[str, torch.Tensor], ood: dict[str, torch.Tensor]
              ) -> dict[str, dict[str, float]]:
    """``{score: {"auroc", "aupr", "fpr95"}}`` for every score present on both sides (ID is
    the positive class; NaN when one side is empty)."""
    table: dict[str, dict[str, float]] = {}
    for name in SCORES:
        if name not in id_scores or name not in ood:
            continue
        a, b = id_scores[name].reshape(-1).double().cpu(), ood[name].reshape(-1).double().cpu()
        s = torch.cat([a, b])
        y = torch.cat([torch.ones_like(a, dtype=torch.long),
                       torch.zeros_like(b, dtype=torch.long)])
        if a.numel() == 0 or b.numel() == 0:
            table[name] = {m: math.nan for m in OOD_METRICS}
        else:
            table[name] = {"auroc": auroc(s, y), "aupr": aupr(s, y), "fpr95": fpr95(s, y)}
    return table


def flat_ood_metrics(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"ood/<score>/<metric>": value}`` (the keys in ``metrics.jsonl``)."""
    return {f"ood/{name}/{m}": v for name, row in table.items() for m, v in row.items()}


def parse_ood_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Inverse of :func:`flat_ood_metrics` on a metrics dict (other keys are ignored)."""
    table: dict[str, dict[str, float]] = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == "ood" and parts[2] in OOD_METRICS:
            try:
                table.setdefault(parts[1], {})[parts[2]] = float(v)
            except (TypeError, ValueError):
                table.setdefault(parts[1], {})[parts[2]] = math.nan
    order = {n: i for i, n in enumerate(SCORES)}
    return dict(sorted(table.items(), key=lambda kv: order.get(kv[0], len(order))))


class NoveltyMeter:
    """Collects the per-item scores of ID and OOD batches (only ``[B]`` vectors are kept, not
    logits), then :meth:`compute` gives the table. Under DDP gather the score lists of all
    ranks (``all_gather_object``) before computing: ranking metrics do not sum."""

    def __init__(self, seen: int | None = None) -> None:
        self.seen = seen
        self.parts: dict[bool, dict[str, list[torch.Tensor]]] = {True: {}, False: {}}

    def update(self, in_distribution: bool, logits: torch.Tensor,
               sample_logits: torch.Tensor | None = None,
               sample_mask: torch.Tensor | None = None) -> None:
        for k, v in ood_scores(logits, sample_logits, sample_mask, self.seen).items():
            self.parts[bool(in_distribution)].setdefault(k, []).append(v.cpu())

    def update_outputs(self, in_distribution: bool, outputs: dict[str, Any]) -> None:
        """Same as :meth:`update` from a pipeline output dict (``logits``,
        ``sample_logits``, ``sample_mask``)."""
        self.update(in_distribution, outputs["logits"], outputs.get("sample_logits"),
                    outputs.get("sample_mask"))

    def scores(self, in_distribution: bool) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.parts[in_distribution].items()}

    def compute(self) -> dict[str, dict[str, float]]:
        return ood_table(self.scores(True), self.scores(False))
