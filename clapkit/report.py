"""Plain-text tables people read: confusion matrices and per-class accuracy.

Shared by the console logger and ``clapkit eval`` so both print the same layout. Class
names are never cut: the label column is as wide as the longest name, the count columns as
wide as their largest number. Accuracy-like values are fractions in [0, 1] (``metrics.py``)
and printed as percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def seen_confusion(confusion: Sequence[Sequence[Any]], run: Any,
                   task: Any) -> list[list[Any]]:
    """``confusion`` cropped to the classes seen up to ``task`` of an incremental run (its
    ``task_classes`` groups, classes in position order): after a task of 8 seen classes a
    20-class matrix shows 8x8, as the classes not seen yet have neither items nor logits.
    A run of one task, or without ``task_classes``, gets the matrix unchanged."""
    rows = [list(r) for r in confusion]
    groups = getattr(run, "task_classes", None) or []
    if int(getattr(run, "num_tasks", 1) or 1) <= 1 or not isinstance(task, int) \
            or not 0 <= task < len(groups):
        return rows
    seen = sum(len(g) for g in groups[:task + 1])
    return [r[:seen] for r in rows[:seen]] if 0 < seen < len(rows) else rows


def format_confusion(confusion: Sequence[Sequence[Any]], names: Sequence[str],
                     indent: str = "  ") -> list[str]:
    """Rows = true class, columns = predicted class (numbered; the legend is the row
    labels), one line per class with its recall at the end."""
    n = len(confusion)
    names = [str(x) for x in names][:n] + [str(i) for i in range(len(names), n)]
    label_w = max([len("true \\ pred")] + [len(f"{i} {nm}") for i, nm in enumerate(names)])
    cell_w = max([len(str(i)) for i in range(n)]
                 + [len(str(int(v))) for row in confusion for v in row] + [1])
    head = indent + "true \\ pred".ljust(label_w) + " " + " ".join(
        str(j).rjust(cell_w) for j in range(n)) + " " + "recall".rjust(7)
    lines = [head]
    for i, row in enumerate(confusion):
        total = sum(int(v) for v in row)
        rec = f"{100.0 * int(row[i]) / total:.1f}%" if total else "-"
        lines.append(indent + f"{i} {names[i]}".ljust(label_w) + " "
                     + " ".join(str(int(v)).rjust(cell_w) for v in row) + " " + rec.rjust(7))
    return lines


def format_per_class(accuracy: Sequence[float | None], names: Sequence[str],
                     support: Sequence[int] | None = None, indent: str = "  ") -> list[str]:
    """One line per class: name, accuracy (percent), number of items."""
    width = max([len(str(x)) for x in names] + [5])
    lines = []
    for i, nm in enumerate(names):
        a = accuracy[i] if i < len(accuracy) else None
        shown = "     -" if a is None or (isinstance(a, float) and math.isnan(a)) \
            else f"{100.0 * a:5.1f}%"
        extra = f"  (n={support[i]})" if support is not None else ""
        lines.append(f"{indent}{str(nm).ljust(width)}  {shown}{extra}")
    return lines


def pct(value: Any) -> str:
    """A fraction as ``"61.3"`` (percent, one decimal); ``-`` when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.1f}"
