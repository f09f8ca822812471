"""What a run settles before it builds anything: output folder, device, CPU threads, seeds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import ClapkitError, RecipeError
from ..recipe import Recipe


def resolve_out_dir(recipe: Recipe, out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    try:
        return Path(recipe.run.out_dir.format(name=recipe.run.name))
    except (KeyError, IndexError, ValueError) as exc:
        raise RecipeError(recipe.file, "run.out_dir", f"bad placeholder in "
                          f"'{recipe.run.out_dir}' ({exc}); only {{name}} is known") from None


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ClapkitError(f"run.device = \"{spec}\" but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def apply_threads(threads: int) -> int:
    """Set torch's intra-op CPU threads to ``threads`` (``run.threads``; 0 keeps torch's
    default); returns the count before, for :func:`restore_threads`. Set before the run
    builds anything: the count changes the order of float sums, hence the figures."""
    before = torch.get_num_threads()
    if threads > 0 and threads != before:
        torch.set_num_threads(threads)
    return before


def restore_threads(before: int) -> None:
    """Give the process its thread count back (a run started from Python, e.g. a notebook,
    leaves torch as it found it)."""
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
