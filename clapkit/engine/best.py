"""Model selection within a task: the epoch with the best selection metric (``run.select``;
by default the valid UAR of a single-task run, none in an incremental run).

Every ``best/*`` figure is that one epoch's (train and valid WAR/UAR side by side), never a
maximum taken over different epochs: ``best/train_war`` is the train accuracy of the
selected model, which is what ``best.pt`` holds.
"""

from __future__ import annotations

import math
from typing import Any

#: the metrics recorded for the selected epoch, as ``best/<name with _>``
BEST_KEYS = ("train/war", "train/uar", "valid/war", "valid/uar")
CRITERION = "valid/uar"
#: ``run.select`` values that are not metric names
NO_SELECTION, AUTO = "last", "auto"
#: what the built-in (classification) evaluation produces at an evaluated epoch
CLASSIFICATION_METRICS = ("valid/war", "valid/uar")


def selection_metric(select: str, classifies: bool = True,
                     incremental: bool = False) -> str | None:
    """The metric ``run.select`` names (None: no selection, the last epoch is the model).
    ``"auto"``: the valid UAR when a single-task run classifies; no selection in an
    incremental run (the continual-learning protocol reports the model at the end of each
    task, and its valid split is usually the test split) or without a classifier."""
    if select == AUTO:
        return CRITERION if classifies and not incremental else None
    return None if select == NO_SELECTION else select


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


class BestTracker:
    """The selected epoch's figures (``values``: ``{"valid_uar": ..., "train_war": ...}``);
    ``criterion`` is the selection metric (higher is better; None: never selects)."""

    def __init__(self, values: dict[str, float] | None = None,
                 criterion: str | None = CRITERION) -> None:
        self.values: dict[str, float] = dict(values or {})
        self.criterion = criterion

    def reset(self) -> None:
        self.values = {}

    def update(self, metrics: dict[str, Any]) -> bool:
        """Take this epoch's figures when its selection metric beats the best so far (epochs
        without an evaluation never do); True when it did."""
        if self.criterion is None:
            return False
        v = metrics.get(self.criterion)
        if not _finite(v):
            return False
        best = self.values.get(self.criterion.replace("/", "_"))
        if best is not None and not float(v) > best:
            return False
        keys = dict.fromkeys((*BEST_KEYS, self.criterion))
        self.values = {k.replace("/", "_"): float(metrics[k]) for k in keys
                       if _finite(metrics.get(k))}
        return True

    def metrics(self) -> dict[str, float]:
        return {f"best/{k}": v for k, v in self.values.items()}
