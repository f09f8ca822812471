"""Index samplers of the engine: subsets (task items + memory), class weighting, DDP shards.

One sampler covers every case so a run is reproducible and resumable: the order of epoch
``e`` depends only on ``(seed, epoch)``, never on a generator state that would have to be
checkpointed. Under DDP each rank takes a strided shard of the same global order (training
pads the order to a multiple of the world size, as ``DistributedSampler`` does; evaluation
does not pad, so every item is counted exactly once when confusion matrices are summed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def inverse_frequency_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-item weight ``1 / count(label)``: every class is drawn equally often on average
    (seed 002's ``--use-weighted-sampler``)."""
    lab = torch.as_tensor(list(labels), dtype=torch.long)
    counts = torch.bincount(lab).double()
    return 1.0 / counts[lab]


class EpochSampler(torch.utils.data.Sampler[int]):
    """Yields dataset indices drawn from ``indices``.

    ``shuffle``: a fresh permutation per epoch; ``weights`` (one per entry of ``indices``):
    ``len(indices)`` draws with replacement (WeightedRandomSampler semantics); ``balance``
    (the label of each entry of ``indices``): every class contributes the same number of
    items per epoch -- the smallest class count -- a fresh subset each epoch, shuffled;
    none of these: the given order. ``rank``/``world_size`` shard the epoch for DDP.
    """

    def __init__(self, indices: Sequence[int], *, shuffle: bool = False,
                 weights: torch.Tensor | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad: bool | None = None,
                 balance: Sequence[int] | None = None) -> None:
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        if weights is not None and len(weights) != len(self.indices):
            raise ValueError(f"{len(weights)} weights for {len(self.indices)} indices")
        self.balance = None if balance is None else torch.as_tensor(list(balance),
                                                                    dtype=torch.long)
        if self.balance is not None and len(self.balance) != len(self.indices):
            raise ValueError(f"{len(self.balance)} labels for {len(self.indices)} indices")
        self.shuffle, self.weights, self.seed = shuffle, weights, seed
        self.rank, self.world_size = rank, world_size
        self.pad = (shuffle or weights is not None or balance is not None) if pad is None \
            else pad
        self.epoch = 0

    def _per_class(self) -> int:
        if self.balance is None or not len(self.balance):
            return 0
        return int(torch.unique(self.balance, return_counts=True)[1].min())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.indices)
        if self.weights is not None and n:
            pick = torch.multinomial(self.weights.double(), n, replacement=True, generator=g)
            return self.indices[pick]
        if self.balance is not None and n:
            perm = torch.randperm(n, generator=g)
            lab = self.balance[perm]
            grouped = torch.sort(lab, stable=True)
            starts = torch.searchsorted(grouped.values, grouped.values)
            rank = torch.empty(n, dtype=torch.long)
            rank[grouped.indices] = torch.arange(n) - starts      # rank within its class
            keep = perm[rank < self._per_class()]                 # still in permuted order
            return self.indices[keep]
        if self.shuffle:
            return self.indices[torch.randperm(n, generator=g)]
        return self.indices

    def _shard(self) -> torch.Tensor:
        order = self._global_order()
        if self.world_size == 1:
            return order
        if self.pad and len(order):
            total = -(-len(order) // self.world_size) * self.world_size
            order = torch.cat([order, order[: total - len(order)]])
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard().tolist())

    def __len__(self) -> int:
        n = len(self.indices) if self.balance is None else \
            self._per_class() * len(torch.unique(self.balance))
        if self.world_size == 1:
            return n
        if self.pad:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))
