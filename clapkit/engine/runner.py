"""``run_recipe``: load a recipe and train it (the :class:`~clapkit.engine.trainer.Trainer`).

The engine's parts, one module each: ``setup`` (output folder, device, seeds), ``trainer``
(tasks and their phases), ``stage_runner`` (one stage's epochs), ``task_eval`` (evaluation
after a task), ``memory`` (replay exemplars), ``lifecycle`` (components' task hooks),
``resume`` (checkpoints and resume), ``best`` (model selection), ``summary``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..plugins import PluginHost, get_plugin_host
from ..recipe import load_recipe
from .resume import RESUME_FREE, recipe_differences
from .setup import resolve_device, resolve_out_dir, seed_everything
from .trainer import Trainer

__all__ = ["RESUME_FREE", "Trainer", "recipe_differences", "resolve_device",
           "resolve_out_dir", "run_recipe", "seed_everything"]


def run_recipe(path: str | Path, *, overrides: list[str] | tuple[str, ...] = (),
               out_dir: str | Path | None = None, resume: bool = False,
               host: PluginHost | None = None) -> dict[str, Any]:
    """Train and evaluate the recipe at ``path``; returns the run summary (also written to
    ``<out>/summary.json``). ``resume`` continues from ``<out>/checkpoints/last.pt``."""
    host = host or get_plugin_host()
    recipe = load_recipe(path, host, overrides)
    return Trainer(recipe, host, out_dir=out_dir, resume=resume).run()
