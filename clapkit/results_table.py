"""``clapkit runs DIR --format markdown|csv|latex``: the results table a paper prints.

One row per result under DIR (named by its folder relative to DIR): a seed aggregate (a folder with ``aggregate.json``, written by
``clapkit run --seeds``) shows mean +- std over its seeds, and a single finished run (its
``summary.json``) shows its figures. Columns: recipe, run folder, seeds, backbone, memory
size, then
last accuracy, average incremental accuracy, forgetting and BWT, in percent (one decimal).
A run that is not class-incremental has no such figures: its cells read ``-``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import attrs

from .aggregate import read_aggregate
from .runs import _count, _num, _read_json, find_runs, recipe_name

FORMATS = ("markdown", "csv", "latex")
#: (column title, summary key)
FIGURES = (("last", "last_acc"), ("avg", "avg_incremental_acc"),
           ("forgetting", "forgetting"), ("BWT", "bwt"))


@attrs.frozen
class ResultRow:
    recipe: str
    folder: str
    seeds: int
    backbone: str
    memory: int | None
    #: summary key -> (mean, std); std None for a single run
    figures: dict[str, tuple[float, float | None]]
    #: the folder relative to the listed root ("." for the root itself): tells apart rows
    #: of one recipe run with different settings
    name: str = "."


def _relative(folder: Path, root: Path) -> str:
    try:
        return str(folder.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(folder)


def collect_results(root: Path) -> list[ResultRow]:
    """Aggregates first (their seed folders are not listed again), then single runs."""
    rows: list[ResultRow] = []
    covered: set[Path] = set()
    aggregates = sorted({p.parent for p in root.rglob("aggregate.json")})
    for folder in aggregates:
        agg = read_aggregate(folder)
        if not isinstance(agg, dict):        # unreadable, not JSON, or not an object
            continue
        runs = _strings(agg.get("runs"))
        covered.update(Path(r).resolve() for r in runs)
        figs = {}
        for _, key in FIGURES:
            entry = agg.get(key)
            if isinstance(entry, dict) and _num(entry.get("mean")) is not None:
                figs[key] = (float(entry["mean"]), _num(entry.get("std")))
        seeds = agg.get("seeds")
        rows.append(ResultRow(recipe=str(agg.get("recipe", folder.name)), folder=str(folder),
                              name=_relative(folder, root),
                              seeds=_count(agg.get("n")) or
                              (len(seeds) if isinstance(seeds, list) else 0),
                              backbone=str(agg.get("backbone") or "?"),
                              memory=_count(agg.get("memory_size")), figures=figs))
    for run in find_runs(root):
        if run.resolve() in covered:
            continue
        summary = _read_json(run / "summary.json")
        if summary is None:
            continue
        figs = {key: (float(summary[key]), None) for _, key in FIGURES
                if _num(summary.get(key)) is not None}
        rows.append(ResultRow(recipe=recipe_name(run, run.name), folder=str(run), seeds=1,
                              name=_relative(run, root),
                              backbone=str(summary.get("backbone") or "?"),
                              memory=_count(summary.get("memory_size")), figures=figs))
    return rows


def _strings(value: object) -> list[str]:
    """The strings of a JSON list (a damaged aggregate may hold anything there)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _cell(fig: tuple[float, float | None] | None, pm: str) -> str:
    if fig is None:
        return "-"
    mean, std = fig
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} {pm} {100 * std:.1f}"


def _header() -> list[str]:
    return ["recipe", "run", "seeds", "backbone", "memory", *(t for t, _ in FIGURES)]


def _cells(row: ResultRow, pm: str) -> list[str]:
    return [row.recipe, row.name, str(row.seeds), row.backbone,
            "-" if not row.memory else str(row.memory),
            *(_cell(row.figures.get(k), pm) for _, k in FIGURES)]


def format_table(rows: list[ResultRow], fmt: str) -> str:
    """The table as text in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "markdown":
        lines = ["| " + " | ".join(_header()) + " |",
                 "|" + "|".join(["---"] * 5 + ["---:"] * len(FIGURES)) + "|"]
        lines += ["| " + " | ".join(_cells(r, "±")) + " |" for r in rows]
        lines.append("")
        lines.append("Figures in percent; mean ± sample std over seeds where seeds > 1.")
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        def esc(t: str) -> str:
            return t.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")
        lines = [r"\begin{tabular}{lllll" + "r" * len(FIGURES) + "}", r"\toprule",
                 " & ".join(esc(h) for h in _header()) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) if i < 5 else c.replace("±", r"$\pm$")
                             for i, c in enumerate(_cells(r, "±"))) + r" \\" for r in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["recipe", "folder", "seeds", "backbone", "memory",
                    *(f"{t}_{part}" for t, _ in FIGURES for part in ("mean", "std"))])
        for r in rows:
            vals: list[str] = []
            for _, k in FIGURES:
                fig = r.figures.get(k)
                vals += ["" if fig is None else f"{100 * fig[0]:.4f}",
                         "" if fig is None or fig[1] is None else f"{100 * fig[1]:.4f}"]
            w.writerow([r.recipe, r.folder, r.seeds, r.backbone, r.memory or 0, *vals])
        return buf.getvalue()
    raise ValueError(f"unknown format '{fmt}' (one of {', '.join(FORMATS)})")


def format_aggregate(root: Path) -> list[str]:
    """What ``clapkit run --seeds`` prints: each headline figure as mean +- std."""
    agg = read_aggregate(root) or {}
    lines = []
    for title, key in (*FIGURES, ("final valid UAR", "final/valid_uar"),
                       ("task-aware", "last_task_aware_acc")):
        entry = agg.get(key)
        if isinstance(entry, dict) and _num(entry.get("mean")) is not None:
            vals = ", ".join(f"{100 * v:.1f}" for v in entry["values"])
            lines.append(f"{title}: {100 * entry['mean']:.1f} ± {100 * entry['std']:.1f} "
                         f"(seeds: {vals})")
    return lines
