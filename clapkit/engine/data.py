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


#: ``data.valid_split`` naming the part of the train split ``data.valid_fraction`` holds out
HELD_OUT = "held_out"
#: the held-out items are drawn per class with this seed, the same for every ``run.seed`` (a
#: seed sweep varies the model, not the data it is selected on)
HELD_OUT_SEED = 0


def check_splits(source: DatasetSource, recipe: Recipe) -> tuple[str, str, str | None]:
    """``(train, valid, test)`` split names, each present in the dataset (or the held-out
    part of the train split), or a RecipeError that names the key to set and the splits
    there are."""
    keys = recipe.data.keys
    have = source.splits()
    file = recipe.data.file
    if keys.train_split not in have:
        raise RecipeError(file, "data.train_split", f"the dataset has no split "
                          f"'{keys.train_split}'", allowed=have, got=keys.train_split)
    _check_stage_splits(recipe, have)
    if keys.valid_fraction > 0 or keys.valid_split == HELD_OUT:
        _check_held_out(keys, have, file)
        return keys.train_split, HELD_OUT, keys.test_split
    if keys.valid_split is None or keys.valid_split not in have:
        raise RecipeError(file, "data.valid_split",
                          f"the dataset has no split '{keys.valid_split}' to select the model "
                          "with; name one of its splits", allowed=have,
                          got=str(keys.valid_split))
    if keys.test_split is not None and keys.test_split not in have:
        raise RecipeError(file, "data.test_split", f"the dataset has no split "
                          f"'{keys.test_split}'", allowed=have, got=keys.test_split)
    return keys.train_split, keys.valid_split, keys.test_split


def _check_stage_splits(recipe: Recipe, have: list[str]) -> None:
    """A stage's own ``split`` exists and is not one the model is selected or tested on."""
    keys = recipe.data.keys
    for i, stage in enumerate(recipe.stages):
        if not stage.split:
            continue
        key = f"stages[{i}].split"
        if stage.split not in have:
            raise RecipeError(recipe.file, key, f"stage '{stage.name}': the dataset has no "
                              f"split '{stage.split}'", allowed=have, got=stage.split)
        for role, name in (("valid", keys.valid_split), ("test", keys.test_split)):
            if stage.split == name:
                raise RecipeError(recipe.file, key, f"stage '{stage.name}' would train on "
                                  f"the {role} split '{name}' (data.{role}_split), which "
                                  "measures the model; train on another split")


def _check_held_out(keys: Any, have: list[str], file: str | None) -> None:
    if keys.valid_fraction <= 0:
        raise RecipeError(file, "data.valid_fraction", f"data.valid_split = \"{HELD_OUT}\" "
                          "selects on a part of the train split held out of training: say "
                          "how large (e.g. data.valid_fraction = 0.1)")
    if keys.valid_split != HELD_OUT:
        raise RecipeError(file, "data.valid_split", f"data.valid_fraction = "
                          f"{keys.valid_fraction} holds out part of the train split to select "
                          f"on; name it data.valid_split = \"{HELD_OUT}\" (the recipe names "
                          f"'{keys.valid_split}')", allowed=[HELD_OUT], got=keys.valid_split)
    if keys.test_split is None or keys.test_split not in have:
        raise RecipeError(file, "data.test_split", "with a held-out valid split the figures "
                          "are reported on the test split: name it", allowed=have,
                          got=str(keys.test_split))


def held_out_items(labels: list[int], fraction: float, seed: int = HELD_OUT_SEED
                   ) -> frozenset[int]:
    """Per class, ``round(fraction * n)`` of its ``n`` items (at least one when the class has
    two or more, never all), drawn with ``seed``: stratified, so every class is selected on."""
    import random
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    rng = random.Random(seed)
    out: list[int] = []
    for y in sorted(by_class):
        items = by_class[y]
        if len(items) < 2:
            continue
        k = min(len(items) - 1, max(1, round(fraction * len(items))))
        out += rng.sample(items, k)
    return frozenset(out)


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
                       for s in {self.train_split, self.valid_split, self.test_split}
                       if s and s != HELD_OUT}
        self.held_out: frozenset[int] = frozenset()
        if self.valid_split == HELD_OUT:
            self.labels[HELD_OUT] = self.labels[self.train_split]   # same items, same indices
            self.held_out = held_out_items(self.labels[self.train_split],
                                           self.keys.valid_fraction)
        #: where the task-end figures (accuracy matrix, novelty) are measured: the test split
        #: when selection has its own held-out split, else the valid split (class-incremental
        #: recipes name the test split there)
        self.report_split = self.test_split if self.held_out else self.valid_split

    def split_labels(self, split: str) -> list[int]:
        """The labels of ``split``'s items (read once; a stage's own split on first use)."""
        if split not in self.labels:
            self.labels[split] = [r.label for r in self.source.refs(split)]
        return self.labels[split]

    def items(self, split: str, scenario: Any, tasks: list[int]) -> list[int]:
        """Indices of ``split``'s items of ``tasks``' classes; the train split without its
        held-out items, ``held_out`` only those."""
        base = self.train_split if split == HELD_OUT else split
        idx = scenario.items_of(self.split_labels(base), tasks)
        if split == HELD_OUT:
            return [i for i in idx if i in self.held_out]
        if split == self.train_split and self.held_out:
            return [i for i in idx if i not in self.held_out]
        return idx

    # -- datasets --------------------------------------------------------------------------

    def dataset(self, split: str, train: bool, cached: bool) -> Any:
        """The pixel dataset of ``split`` (train = random frames + train transform), or its
        cached features (``train`` then means the ``cache.views`` augmented views). The
        held-out split reads the train split's (eval-view) items and cache."""
        if split == HELD_OUT:
            split, train = self.train_split, False
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

    def train_sampler(self, indices: list[int], kind: str, split: str | None = None
                      ) -> EpochSampler:
        """The epoch sampler of ``kind`` ("shuffle", "weighted", "class_balanced") over the
        items ``indices`` of ``split`` (default: the train split; this rank's shard)."""
        all_labels = self.split_labels(split or self.train_split)
        labels = [all_labels[i] for i in indices]
        return EpochSampler(
            indices, shuffle=True, seed=self.seed, rank=self.info.rank,
            world_size=self.info.world_size,
            weights=inverse_frequency_weights(labels) if kind == "weighted" and indices
            else None,
            balance=labels if kind == "class_balanced" else None)

    def train_loader(self, indices: list[int], *, epoch: int, cached: bool,
                     sampler: str | None = None, split: str | None = None
                     ) -> torch.utils.data.DataLoader:
        """Loader over the items ``indices`` of ``split`` (default: the train split) with the
        ``sampler`` kind (default: shuffled, or class-weighted with
        ``data.weighted_sampler``); cached view ``epoch % cache.views``."""
        # one cached view = the eval-transform features; K views = K train-mode views and
        # epoch e reads view e % K (CachedFeatures.set_epoch)
        augment = self.keys.augment and (not cached or self.cache_cfg.views > 1)
        ds = self.dataset(split or self.train_split, augment, cached)
        ds.set_epoch(epoch)
        smp = self.train_sampler(indices, self.sampler_kind(sampler), split)
        smp.set_epoch(epoch)
        return self._loader(ds, smp, self.keys.batch_size)

    def steps_per_epoch(self, indices: list[int], sampler: str | None = None,
                        split: str | None = None) -> int:
        """Optimizer steps in one training epoch over ``indices`` (of ``split``) on this
        rank."""
        n = len(self.train_sampler(indices, self.sampler_kind(sampler), split))
        return max(1, -(-n // self.keys.batch_size))

    def eval_loader(self, split: str, indices: list[int], *, cached: bool,
                    shard: bool = True) -> torch.utils.data.DataLoader:
        ds = self.dataset(split, False, cached)
        sampler = EpochSampler(indices, rank=self.info.rank if shard else 0,
                               world_size=self.info.world_size if shard else 1, pad=False)
        return self._loader(ds, sampler, self.keys.eval_batch_size or self.keys.batch_size)
