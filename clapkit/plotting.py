"""PNG figures for runs: confusion matrix, accuracy matrix R, learning curves.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch),
so plotting is safe inside a training process and in threads; every file is written to a
temporary name in the target folder and moved into place with ``os.replace``, so a viewer
never sees a half-written PNG. matplotlib is imported lazily to keep ``import clapkit`` light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write

__all__ = ["short_names", "save_figure_atomic", "plot_confusion", "plot_accuracy_matrix",
           "plot_learning_curves"]


def short_names(names: Sequence[str], width: int = 6) -> list[str]:
    """Class names cut to ``width`` characters, made unique by a numeric suffix when cut."""
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        s = str(name)[:width]
        if s in seen:
            s = str(name)[: max(0, width - len(str(i)))] + str(i)
        seen.add(s)
        out.append(s)
    return out


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure_atomic(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (:func:`clapkit.atomic.atomic_write`)."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str] | None,
                   path: str | Path, title: str = "", normalize: bool = True,
                   dpi: int = 100, name_width: int = 10) -> Path:
    """Heatmap of a ``[C,C]`` confusion matrix (rows true, columns predicted).

    ``normalize`` colours by row (recall) so rare classes stay visible; cells show counts
    while C <= 20, tick labels are drawn while C <= 40.
    """
    import numpy as np

    conf = np.asarray(confusion, dtype=np.float64)
    c = conf.shape[0]
    rows = conf.sum(axis=1, keepdims=True)
    shown = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0) if normalize else conf
    side = min(max(4.0, 0.45 * c + 2.0), 20.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if c <= 40:
        labels = short_names(class_names, name_width) if class_names and len(class_names) == c \
            else [str(i) for i in range(c)]
        ax.set_xticks(range(c), labels=labels, rotation=90, fontsize=8)
        ax.set_yticks(range(c), labels=labels, fontsize=8)
    if c <= 20:
        thresh = 0.5 * (shown.max() if shown.size else 1.0)
        for (i, j), v in np.ndenumerate(conf):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > thresh else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi)


def plot_accuracy_matrix(rows: Sequence[Sequence[float]], path: str | Path,
                         title: str = "accuracy matrix R[t][j] (%)", dpi: int = 100) -> Path:
    """Lower-triangular heatmap of R[t][j] (after task t, on task j), values in [0, 1]."""
    import numpy as np

    n = len(rows)
    r = np.full((n, n), np.nan)
    for t, row in enumerate(rows):
        r[t, : len(row)] = row
    side = min(max(3.5, 0.6 * n + 2.0), 16.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(r * 100.0), cmap="viridis", vmin=0.0, vmax=100.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after learning task t")
    if n <= 15:
        for (i, j), v in np.ndenumerate(r):
            if not math.isnan(v):
                ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v < 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi)


def plot_learning_curves(history: Sequence[dict[str, Any]], path: str | Path,
                         keys: Sequence[str] = ("train/war", "train/uar", "valid/war",
                                                "valid/uar"),
                         dpi: int = 100) -> Path:
    """Metrics per epoch (x = epoch index over the whole run), in percent.

    ``history`` items hold ``task``, ``stage`` and the metric keys; dotted vertical lines
    mark where a stage or task begins.
    """
    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(1, len(history) + 1))
    for key in keys:
        ys = [100.0 * float(h[key]) if isinstance(h.get(key), (int, float)) else math.nan
              for h in history]
        if any(not math.isnan(y) for y in ys):
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
    for i in range(1, len(history)):
        prev, cur = history[i - 1], history[i]
        if (prev.get("task"), prev.get("stage")) != (cur.get("task"), cur.get("stage")):
            ax.axvline(i + 0.5, color="grey", linestyle=":", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (whole run)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi)
