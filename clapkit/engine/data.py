"""The run's data: split checks, pixel and cached datasets, and loaders per purpose.

Datasets are built once per (split, mode) and reused; loaders are cheap views with an
:class:`~clapkit.engine.sampling.EpochSampler` over a subset of item indices (a task's items,
plus the replay memory). Cached datasets are used whenever the stage leaves the image encoder
frozen (and ``cache.enabled`` is not ``off``): the encoder is then never called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.base import ClipDataset, DatasetSource, WithTexts, collate_items
from ..errors import RecipeError
from ..interfaces import Backbone
from ..recipe import Recipe
from .checkpoint import rng_state, set_rng_state
from .distributed import DistInfo, barrier
from .sampling import EpochSampler, inverse_frequency_weights

#: caches up to this size are read into RAM once (the fastest path); larger ones stream
IN_MEMORY_BYTES = 2 << 30


def check_splits(source: DatasetSource, recipe: Recipe) -> tuple[str, str, str | None]:
    """``(train, valid, test)`` split names, each present in the dataset, or a RecipeError
    that names the key to set and the splits there are."""
    keys = recipe.data.keys
    have = source.splits()
    file = recipe.data.file
    if keys.train_split not in have:
        raise RecipeError(file, "data.train_split", f"the dataset has no split "
                          f"'{keys.train_split}'", allowed=have, got=keys.train_split)
    if keys.valid_split is None or keys.valid_split not in have:
        raise RecipeError(file, "data.valid_split",
                          f"the dataset has no split '{keys.valid_split}' to select the model "
                          "with; name one of its splits", allowed=have,
                          got=str(keys.valid_split))
    if keys.test_split is not None and keys.test_split not in have:
        raise RecipeError(file, "data.test_split", f"the dataset has no split "
                          f"'{keys.test_split}'", allowed=have, got=keys.test_split)
    return keys.train_split, keys.valid_split, keys.test_split


class RunData:
    """Datasets and loaders of one run (this rank's shards)."""

    def __init__(self, source: DatasetSource, recipe: Recipe, backbone: Backbone,
                 info: DistInfo, seed: int, device: torch.device) -> None:
        self.source, self.recipe, self.backbone = source, recipe, backbone
        self.info, self.seed, self.device = info, seed, device
        self.train_split, self.valid_split, self.test_split = check_splits(source, recipe)
        self.keys = recipe.data.keys
        if not self.keys.augment and recipe.cache.views > 1:
            raise RecipeError(recipe.file, "cache.views", f"cache.views = {recipe.cache.views} "
                              "asks for augmented train views but data.augment = false")
        self.cache_cfg = recipe.cache
        self._datasets: dict[tuple, Any] = {}
        self.progress = recipe.run.progress
        self.labels = {s: [r.label for r in source.refs(s)]
                       for s in {self.train_split, self.valid_split, self.test_split} if s}

    # -- datasets --------------------------------------------------------------------------

    def dataset(self, split: str, train: bool, cached: bool) -> Any:
        """The pixel dataset of ``split`` (train = random frames + train transform), or its
        cached features (``train`` then means the ``cache.views`` augmented views)."""
        key = (split, train, cached)
        if key not in self._datasets:
            if cached:
                ds = self._cached(split, train)
            else:
                ds = ClipDataset(self.source, split, self.backbone.transform(train), train,
                                 seed=self.seed)
            refs = self.source.refs(split)
            if any(r.texts for r in refs):        # items that carry captions
                ds = WithTexts(ds, refs)
            self._datasets[key] = ds
        return self._datasets[key]

    def _cached(self, split: str, train: bool) -> Any:
        """Build (rank-sharded; rank 0 publishes) or reuse the split's cache files."""
        from ..cache import ensure_caches, open_cached
        # building consumes random numbers (augmentations); whether a cache already existed
        # must not change the run, so the RNG states are put back afterwards
        saved = rng_state()
        try:
            paths = self._ensure(ensure_caches, split, train)
        finally:
            set_rng_state(saved)
        barrier(self.info)
        size = sum(p.stat().st_size for p in paths)
        return open_cached(paths, in_memory=size <= IN_MEMORY_BYTES)

    def _ensure(self, ensure_caches: Any, split: str, train: bool) -> list[Path]:
        return ensure_caches(self.backbone, self.source, split, streams=self.source.streams,
                             train=train, views=self.cache_cfg.views if train else 1,
                             cache_dir=Path(self.cache_cfg.dir),
                             batch_size=self.cache_cfg.batch_size,
                             seed=self.seed if train else 0, rank=self.info.rank,
                             world_size=self.info.world_size,
                             progress=self.progress and self.info.is_main)

    # -- loaders ---------------------------------------------------------------------------

    def _loader(self, dataset: Any, sampler: EpochSampler, batch_size: int,
                drop_last: bool = False) -> torch.utils.data.DataLoader:
        workers = self.keys.num_workers
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
            drop_last=drop_last, pin_memory=self.device.type == "cuda",
            persistent_workers=False, collate_fn=collate_items)

    def sampler_kind(self, stage_sampler: str | None) -> str:
        """A stage's sampler; "auto" (or none) follows ``data.weighted_sampler``."""
        if stage_sampler not in (None, "auto"):
            return stage_sampler
        return "weighted" if self.keys.weighted_sampler else "shuffle"

    def train_sampler(self, indices: list[int], kind: str) -> EpochSampler:
        """The epoch sampler of ``kind`` ("shuffle", "weighted", "class_balanced") over the
        train-split items ``indices`` (this rank's shard)."""
        all_labels = self.labels[self.train_split]
        labels = [all_labels[i] for i in indices]
        return EpochSampler(
            indices, shuffle=True, seed=self.seed, rank=self.info.rank,
            world_size=self.info.world_size,
            weights=inverse_frequency_weights(labels) if kind == "weighted" and indices
            else None,
            balance=labels if kind == "class_balanced" else None)

    def train_loader(self, indices: list[int], *, epoch: int, cached: bool,
                     sampler: str | None = None) -> torch.utils.data.DataLoader:
        """Loader over the train-split items ``indices`` with the ``sampler`` kind (default:
        shuffled, or class-weighted with ``data.weighted_sampler``); cached view
        ``epoch % cache.views``."""
        # one cached view = the eval-transform features; K views = K train-mode views and
        # epoch e reads view e % K (CachedFeatures.set_epoch)
        augment = self.keys.augment and (not cached or self.cache_cfg.views > 1)
        ds = self.dataset(self.train_split, augment, cached)
        ds.set_epoch(epoch)
        smp = self.train_sampler(indices, self.sampler_kind(sampler))
        smp.set_epoch(epoch)
        return self._loader(ds, smp, self.keys.batch_size)

    def steps_per_epoch(self, indices: list[int], sampler: str | None = None) -> int:
        """Optimizer steps in one training epoch over ``indices`` on this rank."""
        n = len(self.train_sampler(indices, self.sampler_kind(sampler)))
        return max(1, -(-n // self.keys.batch_size))

    def eval_loader(self, split: str, indices: list[int], *, cached: bool,
                    shard: bool = True) -> torch.utils.data.DataLoader:
        ds = self.dataset(split, False, cached)
        sampler = EpochSampler(indices, rank=self.info.rank if shard else 0,
                               world_size=self.info.world_size if shard else 1, pad=False)
        return self._loader(ds, sampler, self.keys.eval_batch_size or self.keys.batch_size)
