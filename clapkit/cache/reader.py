"""Serving cached features with the item contract of :class:`clapkit.data.base.ClipDataset`.

Items are ``{"id", "label", "index", "features": {stream: Tensor[T,D] float32}}``. Several files
of one split combine into one dataset: one per stream, and for training optionally several
augmented views (``set_epoch(e)`` serves view ``e % K``).

h5py handles are opened lazily and per process (they are not fork-safe), so the dataset can
go to DataLoader workers. Batches are read with one h5py call per stream over sorted indices
(:meth:`CachedFeatures.read_batch`); ``in_memory=True`` loads the arrays once (the fastest
path when the cache fits in RAM).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data import SequentialSampler

from ..errors import ClapkitError
from . import store


def _read_rows(ds: h5py.Dataset | np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, unique) in one read: a slice when they are dense, else a point
    selection."""
    if len(idx) == 0:
        return np.asarray(ds[0:0])
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if isinstance(ds, np.ndarray):
        return ds[idx]
    if hi - lo <= max(4 * len(idx), 64):
        return ds[lo:hi][idx - lo]
    return ds[idx]


class CachedFeatures(Dataset):
    """Cached features of one split; see the module docstring."""

    def __init__(self, paths: Iterable[str | Path] | str | Path, *,
                 in_memory: bool = False) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ClapkitError("cache: no cache files given")
        views: dict[int, dict[str, Path]] = {}
        first: dict[str, Any] | None = None
        ids_ref: np.ndarray | None = None
        for p in self.paths:
            problem = store.published_problem(p)
            if problem:
                raise ClapkitError(f"cache file {p}: {problem}")
            with h5py.File(p, "r") as f:
                a = store.read_attrs(f)
                ids = f["ids"].asstr()[...]
                labels = f["labels"][...]
            if first is None:
                first, ids_ref, self._labels = a, ids, labels
            else:
                for k in ("split", "dataset_fingerprint", "backbone_fingerprint", "num_items",
                          "num_frames", "embed_dim", "mode"):
                    if a[k] != first[k]:
                        raise ClapkitError(f"cache files disagree on {k}: {self.paths[0]} has "
                                           f"{first[k]!r}, {p} has {a[k]!r}")
                if not np.array_equal(ids, ids_ref) or not np.array_equal(labels, self._labels):
                    raise ClapkitError(_disagreement(self.paths, p))
            by_stream = views.setdefault(int(a["view"]), {})
            if a["stream"] in by_stream:
                raise ClapkitError(f"cache files {by_stream[a['stream']]} and {p} are both "
                                   f"stream '{a['stream']}' view {a['view']}")
            by_stream[a["stream"]] = p
        assert first is not None and ids_ref is not None
        self.meta = first
        self.streams = tuple(views[min(views)])
        for v, by_stream in views.items():
            if set(by_stream) != set(self.streams):
                raise ClapkitError(f"cache view {v} has streams {sorted(by_stream)}, "
                                   f"view {min(views)} has {sorted(self.streams)}")
        self.views = {v: views[v] for v in sorted(views)}
        self.view = min(views)
        self.ids: list[str] = [str(i) for i in ids_ref]
        self.labels = torch.as_tensor(self._labels, dtype=torch.long)
        self.split = str(first["split"])
        self.num_frames, self.embed_dim = int(first["num_frames"]), int(first["embed_dim"])
        self._pid: int | None = None
        self._files: dict[Path, h5py.File] = {}
        self._memory: dict[tuple[int, str], np.ndarray] | None = None
        if in_memory:
            self.load_in_memory()

    # -- state --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Serve augmented view ``epoch % K`` (no-op with one view)."""
        keys = list(self.views)
        self.view = keys[epoch % len(keys)]

    def load_in_memory(self) -> None:
        """Read every file once into RAM (float16 arrays)."""
        mem: dict[tuple[int, str], np.ndarray] = {}
        for v, by_stream in self.views.items():
            for s, p in by_stream.items():
                with h5py.File(p, "r") as f:
                    problem = store.integrity_problem(f)      # every block: it is all read
                    if problem:
                        raise ClapkitError(f"cache file {p}: {problem}; delete it to have it "
                                           "rebuilt")
                    mem[(v, s)] = f["features"][...]
        self._memory = mem

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def _array(self, stream: str) -> h5py.Dataset | np.ndarray:
        if self._memory is not None:
            return self._memory[(self.view, stream)]
        if self._pid != os.getpid():           # first use, or a forked worker
            self._files = {}
            self._pid = os.getpid()
        path = self.views[self.view][stream]
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = h5py.File(path, "r", rdcc_nbytes=store.READ_CACHE_BYTES)
        return f["features"]

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a handle inherited over fork
                pass
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            self.close()

    # -- reading ------------------------------------------------------------------------------

    def read_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, Any]:
        """A collated batch ``{"id", "label" [B], "index" [B], "features" {s: [B,T,D]}}`` in the
        order of ``indices`` (duplicates allowed), one read per stream."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices,
                         dtype=np.int64).reshape(-1)
        n = len(self.ids)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"cache index out of range 0..{n - 1}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        feats = {s: torch.from_numpy(_read_rows(self._array(s), uniq)[inverse]).float()
                 for s in self.streams}
        return {"id": [self.ids[i] for i in idx], "label": self.labels[idx],
                "index": torch.from_numpy(idx), "features": feats}

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, Any]:
        if isinstance(index, (list, tuple, np.ndarray, torch.Tensor)):
            return self.read_batch(index)
        b = self.read_batch([int(index)])
        return {"id": b["id"][0], "label": int(b["label"][0]), "index": int(index),
                "features": {s: v[0] for s, v in b["features"].items()}}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """DataLoader's batched fetch: one read for the whole batch, then split into items."""
        b = self.read_batch(indices)
        return [{"id": b["id"][k], "label": int(b["label"][k]), "index": int(b["index"][k]),
                 "features": {s: v[k] for s, v in b["features"].items()}}
                for k in range(len(b["id"]))]

    def loader(self, batch_size: int, *, shuffle: bool = False, sampler: Sampler | None = None,
               drop_last: bool = False, num_workers: int = 0,
               generator: torch.Generator | None = None) -> DataLoader:
        """Batches read whole: a batch sampler feeds index lists to :meth:`read_batch`."""
        if sampler is None:
            sampler = (RandomSampler(self, generator=generator) if shuffle
                       else SequentialSampler(self))
        return DataLoader(self, batch_size=None, sampler=BatchSampler(sampler, batch_size,
                                                                      drop_last),
                          num_workers=num_workers, collate_fn=_identity,
                          persistent_workers=False)


def _disagreement(paths: list[Path], other: Path) -> str:
    """Which of the files to rebuild when their item lists differ: the one whose items
    differ from the majority's (by the stored digest), else the later file."""
    digests: dict[Path, str] = {}
    for p in paths:
        with h5py.File(p, "r") as f:
            digests[p] = str(store.read_attrs(f).get("items_sha256"))
    counts: dict[str, int] = {}
    for d in digests.values():
        counts[d] = counts.get(d, 0) + 1
    top = max(counts.values())
    majority = [d for d, c in counts.items() if c == top]
    odd = ([p for p in paths if digests[p] != majority[0]] if len(majority) == 1
           else [other])
    return (f"cache files {paths[0]} and {other} list different items (ids or labels "
            f"differ); rebuild {', '.join(str(p) for p in odd)} (delete it; the next run or "
            "`clapkit cache build` writes it again from the dataset)")


def _identity(batch: Any) -> Any:
    return batch


def open_cached(paths: Iterable[str | Path] | str | Path, *,
                in_memory: bool = False) -> CachedFeatures:
    """A :class:`CachedFeatures` over cache files of one split (streams x views)."""
    return CachedFeatures(paths, in_memory=in_memory)
