"""Evaluation metrics: classification, incremental learning, OOD/novelty ranking, calibration.

Conventions (shared by the engine and the loggers):

* every accuracy-like value is a **fraction in [0, 1]**; loggers turn them into percentages;
* a confusion matrix is ``[C, C]`` with rows = true class, columns = predicted class; it is
  the single state of :class:`ClassificationMeter`, so DDP reduces a meter with one
  ``all_reduce(meter.confusion)`` (a sum);
* a class (or task) without samples in the targets is *absent*: it yields NaN in per-class /
  per-task vectors and is left out of means (UAR averages the classes present only).

Everything is vectorised torch (no loop over samples, classes or tasks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "confusion_matrix", "war", "uar", "per_class_accuracy", "task_accuracy",
    "task_aware_predictions", "ClassificationMeter", "TaskAwareMeter", "AccuracyMatrix",
    "auroc", "aupr", "fpr_at_tpr", "fpr95", "expected_calibration_error", "CalibrationMeter",
]


# --- classification -------------------------------------------------------------------------

def _as_preds(logits_or_preds: torch.Tensor) -> torch.Tensor:
    """``[B,C]`` logits/probabilities -> argmax; ``[B]`` integer predictions pass through."""
    if logits_or_preds.dim() == 2:
        return logits_or_preds.argmax(dim=1)
    if logits_or_preds.dim() != 1:
        raise ValueError(f"expected logits [B,C] or predictions [B], got shape "
                         f"{tuple(logits_or_preds.shape)}")
    if logits_or_preds.is_floating_point():
        raise ValueError("1-D predictions must be integer class ids (pass [B,C] logits "
                         "to take the argmax)")
    return logits_or_preds


def confusion_matrix(logits_or_preds: torch.Tensor, targets: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """``[C,C]`` int64 counts, rows = true class, columns = predicted class."""
    preds = _as_preds(logits_or_preds).reshape(-1).long()
    targets = targets.reshape(-1).long().to(preds.device)
    if preds.shape != targets.shape:
        raise ValueError(f"{preds.numel()} predictions but {targets.numel()} targets")
    if targets.numel():
        lo = int(torch.minimum(preds.min(), targets.min()))
        hi = int(torch.maximum(preds.max(), targets.max()))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"class ids must lie in [0, {num_classes - 1}], got {lo}..{hi}")
    flat = torch.bincount(targets * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def war(confusion: torch.Tensor) -> float:
    """Weighted average recall = plain accuracy (trace / total); NaN when empty."""
    total = confusion.sum()
    if total == 0:
        return math.nan
    return float(confusion.diagonal().sum().double() / total.double())


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class ``[C]`` (float64); NaN for classes absent from the targets."""
    support = confusion.sum(dim=1).double()
    hits = confusion.diagonal().double()
    return torch.where(support > 0, hits / support.clamp_min(1), torch.full_like(hits, math.nan))


def uar(confusion: torch.Tensor) -> float:
    """Unweighted average recall: mean per-class recall over the classes present."""
    rec = per_class_accuracy(confusion)
    present = ~rec.isnan()
    if not bool(present.any()):
        return math.nan
    return float(rec[present].mean())


def task_accuracy(confusion: torch.Tensor, task_of_class: Sequence[int] | torch.Tensor,
                  num_tasks: int | None = None) -> torch.Tensor:
    """Accuracy on each task's classes ``[num_tasks]`` (NaN where a task has no samples).

    A sample counts as correct only when its exact class is predicted (class-incremental
    accuracy, not task-aware accuracy).
    """
    tasks = torch.as_tensor(task_of_class, dtype=torch.long, device=confusion.device)
    if tasks.numel() != confusion.shape[0]:
        raise ValueError(f"task_of_class has {tasks.numel()} entries for "
                         f"{confusion.shape[0]} classes")
    n = int(num_tasks if num_tasks is not None else int(tasks.max()) + 1)
    support = torch.zeros(n, dtype=torch.float64, device=confusion.device)
    hits = torch.zeros_like(support)
    support.index_add_(0, tasks, confusion.sum(dim=1).double())
    hits.index_add_(0, tasks, confusion.diagonal().double())
    return torch.where(support > 0, hits / support.clamp_min(1),
                       torch.full_like(hits, math.nan))


def task_aware_predictions(logits: torch.Tensor, labels: torch.Tensor,
                           task_of_class: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Task-aware (task-IL) predictions ``[B]``: the argmax over the classes of each item's
    *true* task only (the task oracle of the task-incremental setting; the reference code's
    ``mask_classes``). Logits may cover only the classes seen so far (``C' <= C``)."""
    if logits.dim() != 2:
        raise ValueError(f"expected logits [B,C], got shape {tuple(logits.shape)}")
    tasks = torch.as_tensor(task_of_class, dtype=torch.long, device=logits.device)
    labels = labels.reshape(-1).long().to(logits.device)
    c = logits.shape[1]
    if c > tasks.numel():
        raise ValueError(f"logits have {c} classes but task_of_class only {tasks.numel()}")
    same = tasks[:c][None, :] == tasks[labels][:, None]                 # [B,C']
    return logits.masked_fill(~same, -math.inf).argmax(dim=1)


class TaskAwareMeter:
    """Streaming task-aware accuracy per task (see :func:`task_aware_predictions`).

    Task-aware accuracy tells how much of the class-incremental error is confusion *between*
    tasks: it is >= the class-incremental accuracy and equal when no item is predicted into
    another task. The whole state is ``self.counts`` (float64 ``[2, n_tasks]``: hits,
    support), summed over ranks with one ``all_reduce``.
    """

    def __init__(self, task_of_class: Sequence[int] | torch.Tensor,
                 device: torch.device | str = "cpu") -> None:
        self.task_of_class = torch.as_tensor(task_of_class, dtype=torch.long,
                                             device=torch.device(device))
        self.num_tasks = int(self.task_of_class.max()) + 1 if self.task_of_class.numel() else 0
        self.counts = torch.zeros(2, self.num_tasks, dtype=torch.float64,
                                  device=torch.device(device))

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.reshape(-1).long().to(self.counts.device)
        pred = task_aware_predictions(logits.detach().to(self.counts.device), labels,
                                      self.task_of_class)
        t = self.task_of_class[labels]
        self.counts[0].index_add_(0, t, (pred == labels).double())
        self.counts[1].index_add_(0, t, torch.ones_like(t, dtype=torch.float64))

    def per_task(self) -> torch.Tensor:
        """``[n_tasks]`` task-aware accuracy (NaN for tasks without items)."""
        hits, support = self.counts.cpu()
        return torch.where(support > 0, hits / support.clamp_min(1),
                           torch.full_like(hits, math.nan))

    def accuracy(self) -> float:
        """Sample-weighted task-aware accuracy over every item seen; NaN when empty."""
        hits, support = self.counts.cpu().sum(dim=1)
        return float(hits / support) if support > 0 else math.nan


class ClassificationMeter:
    """Streaming confusion matrix; WAR / UAR / per-class accuracy at the end.

    The whole state is ``self.confusion`` (int64 ``[C,C]``): under DDP the engine sums it over
    ranks with one ``all_reduce`` before :meth:`compute`. Create it on the CUDA device for NCCL.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long,
                                     device=torch.device(device))

    def reset(self) -> None:
        self.confusion.zero_()

    def to(self, device: torch.device | str) -> ClassificationMeter:
        self.confusion = self.confusion.to(device)
        return self

    @torch.no_grad()
    def update(self, logits_or_preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: logits ``[B,C']`` (C' <= C, e.g. the classes seen so far) or preds ``[B]``."""
        batch = confusion_matrix(logits_or_preds.detach(), targets, self.num_classes)
        self.confusion += batch.to(self.confusion.device)

    def merge(self, other: ClassificationMeter) -> None:
        """Add another meter's counts (the single-process analogue of the DDP all-reduce)."""
        self.confusion += other.confusion.to(self.confusion.device)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def compute(self) -> dict[str, Any]:
        """``war``, ``uar`` (floats), ``per_class`` and ``confusion`` (nested lists)."""
        conf = self.confusion.cpu()
        return {"war": war(conf), "uar": uar(conf),
                "per_class": per_class_accuracy(conf).tolist(),
                "confusion": conf.tolist()}


# --- class-incremental learning -----------------------------------------------------------

class AccuracyMatrix:
    """R[t][j]: accuracy on task j after learning task t (j <= t), plus per-row scalars.

    Definitions (T = index of the last task recorded, accuracies as fractions):

    * ``acc_seen[t]``: accuracy on all classes seen up to task t (sample-weighted, which
      differs from the mean of R[t][:t+1] when tasks have different test sizes), so it is
      stored rather than derived;
    * average incremental accuracy = mean_t acc_seen[t];
    * last accuracy = acc_seen[T];
    * forgetting = mean over j < T of (max_{t<T} R[t][j] - R[T][j]) (>= 0 unless a task got
      better later; Chaudhry et al. 2018);
    * backward transfer BWT = mean over j < T of (R[T][j] - R[j][j]) (negative = forgetting
      measured from when the task was learned; Lopez-Paz & Ranzato 2017);
    * ``task_aware[t]`` (optional): task-aware accuracy on the seen classes after task t, the
      argmax restricted to the item's true task (:class:`TaskAwareMeter`);
    * ``ece[t]`` (optional): expected calibration error on the seen classes after task t;
    * ``ood[t]`` (optional): the novel-class detection table after task t,
      ``{score: {auroc, aupr, fpr95}}`` (empty after the last task: nothing is novel), whose
      mean over the tasks that have one is the summary's ``ood/<score>/<metric>``.

    Serialises to plain lists for checkpoints and ``accuracy_matrix.json``.
    """

    def __init__(self) -> None:
        self.rows: list[list[float]] = []
        self.acc_seen: list[float] = []
        self.task_aware: list[float] = []
        self.ece: list[float] = []
        self.ood: list[dict[str, dict[str, float]]] = []

    def update(self, task: int, task_accs: Sequence[float], acc_seen: float, *,
               task_aware: float | None = None, ece: float | None = None,
               ood: dict[str, dict[str, float]] | None = None) -> None:
        """Record evaluation after learning ``task``: ``task_accs[j]`` for j = 0..task."""
        if task != len(self.rows) and task != len(self.rows) - 1:
            raise ValueError(f"tasks must be recorded in order: have {len(self.rows)} rows, "
                             f"got task {task}")
        accs = [float(a) for a in task_accs]
        if len(accs) != task + 1:
            raise ValueError(f"task {task} needs {task + 1} task accuracies, got {len(accs)}")
        values = (accs, float(acc_seen),
                  math.nan if task_aware is None else float(task_aware),
                  math.nan if ece is None else float(ece),
                  {k: {m: float(v) for m, v in row.items()} for k, row in (ood or {}).items()})
        append = task == len(self.rows)
        lists: tuple[list[Any], ...] = (self.rows, self.acc_seen, self.task_aware, self.ece,
                                        self.ood)
        for lst, v in zip(lists, values):
            if append:
                lst.append(v)
            else:  # re-evaluation of the current task (e.g. after a resume) replaces the row
                lst[task] = v

    @property
    def num_tasks(self) -> int:
        return len(self.rows)

    def as_tensor(self) -> torch.Tensor:
        """``[T,T]`` float64, NaN above the diagonal (tasks not learned yet)."""
        n = self.num_tasks
        out = torch.full((n, n), math.nan, dtype=torch.float64)
        if n:
            lower = torch.tril_indices(n, n)
            out[lower[0], lower[1]] = torch.tensor([a for r in self.rows for a in r],
                                                   dtype=torch.float64)
        return out

    def average_incremental_accuracy(self) -> float:
        """Mean over tasks t of the accuracy on all classes seen up to t."""
        return float(torch.tensor(self.acc_seen, dtype=torch.float64).mean()) \
            if self.acc_seen else math.nan

    def last_accuracy(self) -> float:
        """Accuracy on all seen classes after the last task."""
        return self.acc_seen[-1] if self.acc_seen else math.nan

    def forgetting(self) -> float:
        """Mean over old tasks j < T of max_{t<T} R[t][j] - R[T][j]; 0 with one task."""
        n = self.num_tasks
        if n < 2:
            return 0.0 if n else math.nan
        r = self.as_tensor()
        best_before = r[:-1, :-1].nan_to_num(nan=-math.inf).amax(dim=0)  # [T-1]
        return float((best_before - r[-1, :-1]).mean())

    def bwt(self) -> float:
        """Backward transfer: mean over j < T of R[T][j] - R[j][j]; 0 with one task."""
        n = self.num_tasks
        if n < 2:
            return 0.0 if n else math.nan
        r = self.as_tensor()
        return float((r[-1, :-1] - r.diagonal()[:-1]).mean())

    def summary(self) -> dict[str, float]:
        """The scalar summary; task-aware and ECE entries only when they were recorded."""
        out = {"avg_incremental_acc": self.average_incremental_accuracy(),
               "last_acc": self.last_accuracy(), "forgetting": self.forgetting(),
               "bwt": self.bwt()}
        ta = torch.tensor(self.task_aware, dtype=torch.float64)
        if ta.numel() and not bool(ta.isnan().all()):
            out["avg_task_aware_acc"] = float(ta[~ta.isnan()].mean())
            out["last_task_aware_acc"] = float(ta[-1])
        ece = torch.tensor(self.ece, dtype=torch.float64)
        if ece.numel() and not bool(ece.isnan().all()):
            out["last_ece"] = float(ece[-1])
            out["avg_ece"] = float(ece[~ece.isnan()].mean())
        out.update(self.ood_means())
        return out

    def ood_means(self) -> dict[str, float]:
        """``ood/<score>/<metric>``: the mean over the tasks that have a detection table
        (NaN entries skipped), and ``ood/tasks``, how many tasks that is."""
        values: dict[str, list[float]] = {}
        tables = [t for t in self.ood if t]
        for table in tables:
            for score, row in table.items():
                for m, v in row.items():
                    if not math.isnan(v):
                        values.setdefault(f"ood/{score}/{m}", []).append(v)
        out = {k: float(sum(v) / len(v)) for k, v in values.items()}
        if tables:
            out["ood/tasks"] = len(tables)
        return out

    def to_dict(self) -> dict[str, list]:
        return {"rows": [list(r) for r in self.rows], "acc_seen": list(self.acc_seen),
                "task_aware": list(self.task_aware), "ece": list(self.ece),
                "ood": [dict(t) for t in self.ood]}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> AccuracyMatrix:
        """Inverse of :meth:`to_dict` (NaNs may come back as None from JSON; older states
        without ``task_aware``/``ece`` load with those unset)."""
        out = cls()
        n = len(state["rows"])

        def col(key: str) -> list[float | None]:
            vals = state.get(key) or [None] * n
            if len(vals) != n:
                raise ValueError(f"accuracy matrix state: {len(vals)} '{key}' entries for "
                                 f"{n} rows")
            return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                    for v in vals]

        oods = state.get("ood") or [{}] * n
        if len(oods) != n:
            raise ValueError(f"accuracy matrix state: {len(oods)} 'ood' entries for {n} rows")
        for t, (row, seen, ta, ece, ood) in enumerate(zip(state["rows"], state["acc_seen"],
                                                          col("task_aware"), col("ece"), oods,
                                                          strict=True)):
            out.update(t, row, seen, task_aware=ta, ece=ece,
                       ood={k: {m: (math.nan if v is None else v) for m, v in r.items()}
                            for k, r in (ood or {}).items()})
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccuracyMatrix):
            return False
        a, b = self.to_dict(), other.to_dict()
        return all(torch.equal(torch.tensor(a[k], dtype=torch.float64).nan_to_num(-7.0),
                               torch.tensor(b[k], dtype=torch.float64).nan_to_num(-7.0))
                   for k in ("acc_seen", "task_aware", "ece")) and a["rows"] == b["rows"]


# --- OOD / novelty detection (rank-based, ties handled) -----------------------------------

def _binary(scores: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(scores).detach().reshape(-1).double().cpu()
    y = torch.as_tensor(labels).detach().reshape(-1).cpu()
    if s.shape != y.shape:
        raise ValueError(f"{s.numel()} scores but {y.numel()} labels")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be binary (0/1 or bool)")
    return s, y.bool()


def _roc_points(scores: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Cumulative TP/FP counts at each distinct threshold, from the highest score down."""
    s, y = _binary(scores, labels)
    uniq, inv = torch.unique(s, return_inverse=True)             # ascending
    tp = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, y.double())
    fp = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, (~y).double())
    tp, fp = tp.flip(0).cumsum(0), fp.flip(0).cumsum(0)           # predict positive if s >= u
    return tp, fp, int(y.sum()), int((~y).sum())


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (label 1 = positive, higher score = more positive).

    Mann-Whitney U with mid-ranks, so tied scores count one half; NaN without both classes.
    """
    s, y = _binary(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inv, counts = torch.unique(s, return_inverse=True, return_counts=True)
    counts = counts.double()
    mid_rank = counts.cumsum(0) - counts + (counts + 1) / 2        # 1-based average rank
    rank_sum = mid_rank[inv][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aupr(scores: Any, labels: Any) -> float:
    """Area under the precision-recall curve as average precision: sum_k (R_k - R_{k-1}) P_k
    over distinct thresholds (tied scores enter together); NaN without positives."""
    tp, fp, n_pos, _ = _roc_points(scores, labels)
    if n_pos == 0:
        return math.nan
    precision = tp / (tp + fp)
    recall = tp / n_pos
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((d_recall * precision).sum())


def fpr_at_tpr(scores: Any, labels: Any, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate reaches ``tpr``."""
    tp, fp, n_pos, n_neg = _roc_points(scores, labels)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    reached = (tp / n_pos) >= tpr - 1e-12
    first = int(reached.double().argmax())                          # first True (always some)
    return float(fp[first] / n_neg)


def fpr95(scores: Any, labels: Any) -> float:
    """FPR at 95 % TPR (label 1 = positive, e.g. in-distribution when scores are confidences)."""
    return fpr_at_tpr(scores, labels, 0.95)


# --- calibration ----------------------------------------------------------------------------

def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins ``(k/n, (k+1)/n]``.

    ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, confidence = max probability ``[N,C]``.
    """
    if probs.dim() != 2:
        raise ValueError(f"expected probabilities [N,C], got shape {tuple(probs.shape)}")
    if n_bins <= 0:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    probs = probs.detach().double()
    conf, pred = probs.max(dim=1)
    correct = (pred == labels.to(pred.device).reshape(-1)).double()
    n = conf.numel()
    if n == 0:
        return math.nan
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    conf_sum = torch.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return float((conf_sum - acc_sum).abs().sum() / n)


class CalibrationMeter:
    """Streaming ECE with the bins of :func:`expected_calibration_error` (same value on the
    same items). The whole state is ``self.bins`` (float64 ``[3, n_bins]``: item count,
    confidence sum, correct count per bin), summed over ranks with one ``all_reduce``."""

    def __init__(self, n_bins: int = 15, device: torch.device | str = "cpu") -> None:
        if n_bins <= 0:
            raise ValueError(f"n_bins must be positive, got {n_bins}")
        self.n_bins = n_bins
        self.bins = torch.zeros(3, n_bins, dtype=torch.float64, device=torch.device(device))

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of logits ``[B,C']`` (``-inf`` for classes not seen yet is fine)."""
        probs = torch.softmax(logits.detach().double().to(self.bins.device), dim=1)
        conf, pred = probs.max(dim=1)
        correct = (pred == labels.reshape(-1).to(pred.device)).double()
        b = (torch.ceil(conf * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)
        self.bins[0].index_add_(0, b, torch.ones_like(conf))
        self.bins[1].index_add_(0, b, conf)
        self.bins[2].index_add_(0, b, correct)

    def compute(self) -> float:
        count, conf_sum, acc_sum = self.bins.cpu()
        n = float(count.sum())
        return float((conf_sum - acc_sum).abs().sum() / n) if n else math.nan
