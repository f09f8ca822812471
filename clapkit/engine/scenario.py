"""Class order and task splits (DESIGN.md section 4).

Labels are remapped to *positions in the class order*, so the classes of task ``t`` are the
contiguous positions ``[cum[t], cum[t+1])`` and "classes seen so far" is a prefix. The task of
an item is always derived from its (remapped) label, never from an external task id.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import torch

from ..errors import RecipeError
from ..sections import ScenarioConfig


@attrs.frozen
class Scenario:
    """``order[p]`` is the dataset label of position ``p``; ``sizes[t]`` classes per task."""

    order: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.order)

    @property
    def num_tasks(self) -> int:
        return len(self.sizes)

    @property
    def incremental(self) -> bool:
        return self.num_tasks > 1

    def bounds(self, task: int) -> tuple[int, int]:
        cum = np.cumsum((0, *self.sizes))
        return int(cum[task]), int(cum[task + 1])

    def classes_of(self, task: int) -> list[int]:
        """Positions (remapped labels) that ``task`` adds."""
        lo, hi = self.bounds(task)
        return list(range(lo, hi))

    def seen(self, task: int) -> int:
        """Number of classes seen after ``task``: they are positions ``[0, seen)``."""
        return self.bounds(task)[1]

    @property
    def task_of_class(self) -> list[int]:
        return [t for t, n in enumerate(self.sizes) for _ in range(n)]

    def remap_table(self) -> torch.Tensor:
        """``table[dataset_label] = position`` (a LongTensor to index label batches with)."""
        table = torch.empty(self.num_classes, dtype=torch.long)
        table[torch.as_tensor(self.order)] = torch.arange(self.num_classes)
        return table

    def positions(self, labels: Sequence[int]) -> np.ndarray:
        return self.remap_table().numpy()[np.asarray(labels, dtype=np.int64)]

    def task_of_labels(self, labels: Sequence[int]) -> np.ndarray:
        """Task of each item from its dataset label."""
        return np.asarray(self.task_of_class, dtype=np.int64)[self.positions(labels)]

    def items_of(self, labels: Sequence[int], tasks: Sequence[int]) -> list[int]:
        """Indices of items (by dataset label) that belong to any of ``tasks``."""
        mask = np.isin(self.task_of_labels(labels), np.asarray(tasks))
        return np.flatnonzero(mask).tolist()


def make_scenario(cfg: ScenarioConfig, num_classes: int, *, file: str | None = None
                  ) -> Scenario:
    """The scenario of a recipe: class order from the seed, task sizes from
    ``task_to_cls_num`` (none = plain training, one task with every class)."""
    if cfg.class_order == "shuffled":
        order = np.random.RandomState(cfg.class_order_seed).permutation(num_classes).tolist()
    else:
        order = list(range(num_classes))
    sizes = list(cfg.task_to_cls_num) if cfg.task_to_cls_num else [num_classes]
    if any(n <= 0 for n in sizes) or sum(sizes) != num_classes:
        raise RecipeError(file, "scenario.task_to_cls_num",
                          f"task sizes {sizes} must be positive and sum to the dataset's "
                          f"{num_classes} classes (they sum to {sum(sizes)})")
    return Scenario(order=tuple(order), sizes=tuple(sizes))
