"""Several seeds of one recipe: ``clapkit run RECIPE --seeds 0,1,2 --out DIR``.

Each seed runs as its own run folder ``DIR/seed-<s>`` (the recipe with ``run.seed = s``; the
class order keeps its own ``scenario.class_order_seed``), then ``DIR/aggregate.json`` holds,
for every numeric figure of the runs' ``summary.json``, ``{"mean", "std", "values"}`` in seed
order (``std``: the sample standard deviation, n - 1, 0 for a single seed), beside the seeds,
the run folders and the recipe's identity (name, backbone, memory size) that a results table
prints. ``clapkit runs DIR --format markdown`` shows it as mean +- std.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .errors import ClapkitError
from .validators import MAX_SEED

#: the most runs one ``--seeds`` list starts (each one is a full training run)
MAX_SEEDS = 1_000

AGGREGATE_FILE = "aggregate.json"
#: summary entries that describe the run rather than measure it (never averaged)
NOT_FIGURES = frozenset({"seed", "num_tasks", "threads", "memory_size", "epochs",
                         "ood/tasks", "wall_time_s"})


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) -> seeds, distinct, in the order given."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first:
                raise ValueError(part)
            if last > MAX_SEED:
                raise ClapkitError(f"--seeds: seed {last} is above the largest seed "
                                   f"{MAX_SEED} (run.seed takes 0..{MAX_SEED})")
            if len(seeds) + last - first + 1 > MAX_SEEDS:     # checked before it is built
                raise ClapkitError(f"--seeds: '{text}' names more than {MAX_SEEDS} seeds "
                                   "(one full run each)")
            seeds.extend(range(first, last + 1))
    except ValueError:
        raise ClapkitError(f"--seeds: '{text}' is not a list of integers (e.g. 0,1,2 or "
                           "0-4)") from None
    if not seeds:
        raise ClapkitError(f"--seeds: '{text}' names no seed (e.g. 0,1,2)")
    if len(set(seeds)) != len(seeds):
        raise ClapkitError(f"--seeds: '{text}' names a seed twice")
    return seeds


def seed_folder(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def _figure(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def aggregate(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{figure: {"mean", "std", "values"}}`` over the numeric figures every summary has
    (a figure some runs lack is left out rather than averaged over fewer runs)."""
    if not summaries:
        return {}
    keys = [k for k, v in summaries[0].items() if _figure(v) and k not in NOT_FIGURES]
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        if not all(_figure(s.get(k)) for s in summaries):
            continue
        values = [float(s[k]) for s in summaries]
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) != len(values):
            out[k] = {"mean": math.nan, "std": math.nan, "values": values}
            continue
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        out[k] = {"mean": mean, "std": std, "values": values}
    return out


def write_aggregate(out: Path, seeds: Sequence[int], folders: Sequence[Path],
                    summaries: Sequence[dict[str, Any]], recipe_name: str) -> dict[str, Any]:
    """``out/aggregate.json``: the figures over seeds plus what identifies the runs."""
    first = summaries[0] if summaries else {}
    data: dict[str, Any] = {
        "recipe": recipe_name, "seeds": list(seeds),
        "runs": [str(f) for f in folders], "n": len(summaries),
        "std": "sample standard deviation over seeds (n - 1)",
        "backbone": first.get("backbone"), "memory_size": first.get("memory_size"),
        "selection": first.get("selection"),
        **aggregate(summaries)}
    atomic_write_json(out / AGGREGATE_FILE, data)
    return data


def read_aggregate(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / AGGREGATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
