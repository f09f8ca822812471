"""Model selection within a task: the epoch with the best valid UAR.

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


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


class BestTracker:
    """The selected epoch's figures (``values``: ``{"valid_uar": ..., "train_war": ...}``)."""

    def __init__(self, values: dict[str, float] | None = None) -> None:
        self.values: dict[str, float] = dict(values or {})

    def reset(self) -> None:
        self.values = {}

    def update(self, metrics: dict[str, Any]) -> bool:
        """Take this epoch's figures when its valid UAR beats the best so far (epochs
        without a valid evaluation never do); True when it did."""
        v = metrics.get(CRITERION)
        if not _finite(v):
            return False
        best = self.values.get(CRITERION.replace("/", "_"))
        if best is not None and not float(v) > best:
            return False
        self.values = {k.replace("/", "_"): float(metrics[k]) for k in BEST_KEYS
                       if _finite(metrics.get(k))}
        return True

    def metrics(self) -> dict[str, float]:
        return {f"best/{k}": v for k, v in self.values.items()}
