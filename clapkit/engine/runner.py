"""``run_recipe``: load a recipe and train it (the :class:`~clapkit.engine.trainer.Trainer`).

The engine's parts, one module each: ``setup`` (output folder, device, seeds), ``trainer``
(tasks and their phases), ``stage_runner`` (one stage's epochs), ``task_eval`` (evaluation
after a task), ``memory`` (replay exemplars), ``lifecycle`` (components' task hooks),
``resume`` (checkpoints and resume), ``best`` (model selection), ``summary``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..plugins import PluginHost, get_plugin_host
from ..recipe import load_recipe
from .resume import RESUME_FREE, recipe_differences
from .run_folder import RunFolder
from .setup import resolve_device, resolve_out_dir, seed_everything
from .trainer import Trainer

__all__ = ["RESUME_FREE", "Trainer", "recipe_differences", "resolve_device",
           "resolve_out_dir", "run_recipe", "run_seeds", "seed_everything"]


def run_recipe(path: str | Path, *, overrides: list[str] | tuple[str, ...] = (),
               out_dir: str | Path | None = None, resume: bool = False,
               overwrite: bool = False, host: PluginHost | None = None) -> dict[str, Any]:
    """Train and evaluate the recipe at ``path``; returns the run summary (also written to
    ``<out>/summary.json``). ``resume`` continues from ``<out>/checkpoints/last.pt``;
    ``overwrite`` replaces the run in the output folder. The folder is claimed first
    (:class:`~clapkit.engine.run_folder.RunFolder`: one run at a time, no silent overwrite,
    torn temporaries swept) by the process that writes it (rank 0)."""
    host = host or get_plugin_host()
    recipe = load_recipe(path, host, overrides)
    trainer = Trainer(recipe, host, out_dir=out_dir, resume=resume)
    if not _writes_files():
        return trainer.run()
    with RunFolder(trainer.out, resume=resume, overwrite=overwrite) as folder:
        if folder.restart:                 # nothing was saved: the run starts over
            trainer.resume = False
        return trainer.run()


def _writes_files() -> bool:
    """Rank 0 (of a running process group, else of the torchrun environment) writes."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def run_seeds(path: str | Path, seeds: list[int], *, out_dir: str | Path | None = None,
              overrides: list[str] | tuple[str, ...] = (), resume: bool = False,
              overwrite: bool = False, host: PluginHost | None = None) -> dict[str, Any]:
    """The recipe once per seed, into ``<out>/seed-<s>`` (``<out>``: ``out_dir``, else the
    recipe's ``run.out_dir``), then ``<out>/aggregate.json``. With ``resume`` a seed whose
    folder has its summary is taken as done and an interrupted one continues."""
    from ..aggregate import seed_folder, write_aggregate
    from ..engine.summary import read_summary
    host = host or get_plugin_host()
    recipe = load_recipe(path, host, overrides)
    root = resolve_out_dir(recipe, out_dir)
    summaries, folders = [], []
    for seed in seeds:
        folder = seed_folder(root, seed)
        done = read_summary(folder) if resume else None
        if done is None:
            done = run_recipe(path, overrides=(*overrides, f"run.seed={seed}"),
                              out_dir=folder, resume=resume and folder.exists(),
                              overwrite=overwrite, host=host)
        summaries.append(done)
        folders.append(folder)
    if _writes_files():
        write_aggregate(root, seeds, folders, summaries, recipe.run.name)
    return {"out_dir": str(root), "runs": [str(f) for f in folders], "summaries": summaries}
