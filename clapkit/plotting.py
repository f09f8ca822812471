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
                   dpi: int = 100, name_width: int | None = None) -> Path:
    """Heatmap of a ``[C,C]`` confusion matrix (rows true, columns predicted).

    ``normalize`` colours by row (recall) so rare classes stay visible, and the colour bar
    says which scale it is; cells show counts while C <= 20, tick labels (full class names
    unless ``name_width`` cuts them) are drawn while C <= 40.
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
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("fraction of the true class (row-normalised recall)" if normalize
                  else "number of items")
    if c <= 40:
        if class_names and len(class_names) == c:
            labels = (short_names(class_names, name_width) if name_width
                      else [str(n) for n in class_names])
        else:
            labels = [str(i) for i in range(c)]
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
                         title: str = "accuracy matrix R[t][j] (%)", dpi: int = 100,
                         task_labels: Sequence[str] | None = None) -> Path:
    """Lower-triangular heatmap of R[t][j] (after task t, on task j), values in [0, 1];
    the axes name the tasks (``task_labels``, default ``task 0`` ...)."""
    import numpy as np

    n = len(rows)
    r = np.full((n, n), np.nan)
    for t, row in enumerate(rows):
        r[t, : len(row)] = row
    side = min(max(3.5, 0.6 * n + 2.0), 16.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(r * 100.0), cmap="viridis", vmin=0.0, vmax=100.0)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("accuracy (%)")
    labels = list(task_labels) if task_labels is not None else [f"task {t}" for t in range(n)]
    ax.set_xticks(range(n), labels[:n], rotation=45 if n > 4 else 0,
                  ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels[:n])
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


def segments(history: Sequence[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """``(first, last, label)`` per run of consecutive epochs of one (task, stage), 1-based
    x positions; the label is the stage name (``t<task> <stage>`` when there are tasks)."""
    tasks = {h.get("task") for h in history}
    out: list[tuple[int, int, str]] = []
    for i, h in enumerate(history, 1):
        label = (f"t{h.get('task')} {h.get('stage')}" if len(tasks) > 1
                 else str(h.get("stage")))
        if out and out[-1][2] == label and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i, label)
        else:
            out.append((i, i, label))
    return out


def _mark_stages(history: Sequence[dict[str, Any]], ax: Any, lx: Any) -> list[Any]:
    """Stages as tinted bands (one colour per stage name, in the legend), a solid line where
    a task begins with ``task t`` centred above it, dotted lines between a task's stages:
    labels that cannot overlap however short a stage is. Returns the stage legend's
    handles (none with a single stage name)."""
    from matplotlib.patches import Patch
    segs = segments(history)
    names = list(dict.fromkeys(str(h.get("stage")) for h in history))
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")
    colour = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    task_of = [h.get("task") for h in history]
    for first, last, _ in segs:
        stage = str(history[first - 1].get("stage"))
        new_task = first > 1 and task_of[first - 1] != task_of[first - 2]
        for a in (ax, lx):
            a.axvspan(first - 0.5, last + 0.5, color=colour[stage], alpha=0.07, linewidth=0)
            if first > 1:
                a.axvline(first - 0.5, color="grey", linewidth=1.0 if new_task else 0.8,
                          linestyle="-" if new_task else ":")
    tasks = list(dict.fromkeys(task_of))
    if len(tasks) > 1:
        every = max(1, math.ceil(len(tasks) / 20))      # at most 20 task labels
        for k, t in enumerate(tasks):
            if k % every:
                continue
            xs = [i for i, v in enumerate(task_of, 1) if v == t]
            ax.text((xs[0] + xs[-1]) / 2, 101, f"task {t}", ha="center", va="bottom",
                    fontsize=8, color="dimgrey", clip_on=False)
    if len(names) < 2:
        return []
    return [Patch(color=colour[n], alpha=0.3, label=f"stage {n}") for n in names]


def plot_learning_curves(history: Sequence[dict[str, Any]], path: str | Path,
                         keys: Sequence[str] = ("train/war", "train/uar", "valid/war",
                                                "valid/uar"),
                         dpi: int = 100, title: str = "learning curves",
                         loss_keys: Sequence[str] | None = None) -> Path:
    """Metrics per epoch (x = epoch index over the whole run) in percent, above the loss
    curve(s) (``loss/total`` and its terms unless ``loss_keys`` is given).

    ``history`` items hold ``task``, ``stage`` and the metric keys; each stage is a tinted
    band (colour per stage name, legend below), each task labelled above its span.
    """
    fig = _new_figure(9.0, 7.0)
    ax = fig.add_subplot(2, 1, 1)
    lx = fig.add_subplot(2, 1, 2, sharex=ax)
    xs = list(range(1, len(history) + 1))

    def series(key: str, scale: float) -> list[float]:
        return [scale * float(h[key]) if isinstance(h.get(key), (int, float)) else math.nan
                for h in history]

    for key in keys:
        ys = series(key, 100.0)
        if any(not math.isnan(y) for y in ys):
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
    if loss_keys is None:
        terms = sorted({k for h in history for k in h
                        if k.startswith("loss/") and k != "loss/total"})
        loss_keys = ["loss/total", *terms]
    for key in loss_keys:
        ys = series(key, 1.0)
        if any(not math.isnan(y) for y in ys):
            lx.plot(xs, ys, marker="o" if key == "loss/total" else None, markersize=3,
                    linewidth=2.0 if key == "loss/total" else 1.0, label=key)
    stage_handles = _mark_stages(history, ax, lx)
    if stage_handles:     # below the plots, where no curve runs
        fig.legend(handles=stage_handles, loc="lower center", ncol=min(len(stage_handles), 4),
                   fontsize=8, frameon=False)
    from matplotlib.ticker import MaxNLocator

    lx.xaxis.set_major_locator(MaxNLocator(integer=True))
    lx.set_xlabel("epoch (whole run)")
    ax.set_ylabel("accuracy (%)")
    lx.set_ylabel("loss")
    ax.set_ylim(0, 100)
    for a in (ax, lx):
        a.grid(True, alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 if stage_handles else 0, 1, 1))
    return save_figure_atomic(fig, path, dpi)
