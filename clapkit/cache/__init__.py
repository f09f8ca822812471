"""HDF5 feature cache (DESIGN.md section 5).

- :func:`ensure_cache` / :func:`ensure_caches` build (or reuse) the files of a split;
- :func:`open_cached` serves them as :class:`CachedFeatures` with the item contract of
  :class:`clapkit.data.base.ClipDataset` (``"features"`` instead of ``"streams"``);
- :func:`cache_plan` says which (split, transform, views) a recipe caches, so the CLI and the
  engine agree;
- :mod:`.store` holds the file format and its checks (``info``, ``verify``).
"""

from __future__ import annotations

from typing import Any

from .builder import BuildOptions, encode_frames, ensure_cache, ensure_caches
from .reader import CachedFeatures, open_cached
from .store import CacheKey, cache_path, info, published_problem, verify


def cache_plan(data_keys: Any, cache_cfg: Any, splits: list[str]) -> list[tuple[str, bool, int]]:
    """``(split, train, views)`` to cache for a recipe's ``[data]`` keys and ``[cache]``.

    The training split uses the training transform only when ``cache.views > 1`` (several
    augmented views); a single frozen augmented view would add noise without diversity, so
    one view means the eval transform. Validation and test splits use the eval transform.
    Splits absent from ``splits`` (the dataset's) are skipped.
    """
    plan: list[tuple[str, bool, int]] = []
    views = int(getattr(cache_cfg, "views", 1))
    for name, is_train in ((data_keys.train_split, True), (data_keys.valid_split, False),
                           (data_keys.test_split, False)):
        if not name or name not in splits or any(p[0] == name for p in plan):
            continue
        plan.append((name, True, views) if is_train and views > 1 else (name, False, 1))
    return plan


__all__ = ["BuildOptions", "CacheKey", "CachedFeatures", "cache_path", "cache_plan",
           "encode_frames", "ensure_cache", "ensure_caches", "info", "open_cached",
           "published_problem", "verify"]
