"""Building cache files: batched, resumable, lock-protected, optionally sharded over ranks.

Rows are written into ``<file>.partial`` one chunk at a time; after each chunk the ``done``
counter is flushed, so an interrupted build continues from it and keeps what was written.
Each item's augmentation randomness is seeded from (seed, view, item), which makes a resumed or
sharded build byte-identical to a single uninterrupted one. The file is renamed into place
(``os.replace``) only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs
import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.base import ClipDataset, DatasetSource
from ..atomic import publish
from ..errors import ClapkitError
from ..interfaces import Backbone
from ..progress import progress_off
from . import store
from .lock import BuildLock
from .store import CacheKey

log = logging.getLogger(__name__)


@attrs.frozen
class BuildOptions:
    """How to build (never part of a file's identity)."""

    batch_size: int = 64          # images per encode call; a chunk holds batch_size // T items
    num_workers: int = 0
    progress: bool = True
    lock_timeout: float = 3600.0
    shard_timeout: float = 3600.0  # how long rank 0 waits for the other ranks' shards


def item_seed(seed: int, view: int, position: int) -> int:
    digest = hashlib.sha256(f"{seed}:{view}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _SeededItems(Dataset):
    """``dataset[positions[k]]`` with torch/python randomness seeded per item, so random
    transforms give the same view whatever process, order or restart fetches it."""

    def __init__(self, dataset: ClipDataset, positions: np.ndarray, view: int, seed: int) -> None:
        self.dataset, self.positions, self.view, self.seed = dataset, positions, view, seed

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> dict[str, Any]:
        pos = int(self.positions[k])
        s = item_seed(self.seed, self.view, pos)
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also seed (and lazily probe)
            # cuda/xpu/mtia on every item, ~2 ms each; same CPU stream
            torch.default_generator.manual_seed(s)
            random.seed(s)
            item = self.dataset[pos]
        random.setstate(state)
        return item


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": [it["id"] for it in items],
            "label": torch.tensor([int(it["label"]) for it in items], dtype=torch.long),
            "streams": {s: torch.stack([it["streams"][s] for it in items])
                        for s in items[0]["streams"]}}


@torch.no_grad()
def encode_frames(backbone: Backbone, frames: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[B,T,3,H,W]`` -> ``[B,T,D]`` float32 on the CPU, at most ``batch_size`` images a call."""
    b, t = frames.shape[:2]
    flat = frames.reshape(b * t, *frames.shape[2:])
    out = torch.cat([backbone.encode_image(flat[i:i + batch_size]).float().cpu()
                     for i in range(0, flat.shape[0], batch_size)])
    return out.reshape(b, t, -1)


def _publish(partial: Path, final: Path) -> None:
    publish(partial, final)


def _open_partial(path: Path, key: CacheKey, n: int, t: int, d: int,
                  extra: dict[str, Any]) -> h5py.File:
    """The partial file to continue, or a fresh one when it does not match."""
    if path.exists():
        try:
            f = h5py.File(path, "r+")
        except OSError as exc:
            log.warning("cache: %s is unreadable (%s); starting it over", path, exc)
        else:
            a = store.read_attrs(f)
            problem = store.structure_problem(f) or store.identity_problem(f, key)
            if problem is None and (int(a["num_items"]), int(a["num_frames"]),
                                    int(a["embed_dim"])) != (n, t, d):
                problem = "shape differs"
            if problem is None and any(a.get(k) != v for k, v in extra.items()
                                       if k in ("rank", "world_size")):
                problem = "shard layout differs"
            if problem is None:
                return f
            f.close()
            log.warning("cache: partial file %s does not match (%s); starting it over",
                        path, problem)
    return store.create(path, key, num_items=n, num_frames=t, dim=d, extra=extra)


def _encode_into(backbone: Backbone, dataset: ClipDataset,
                 targets: Sequence[tuple[str, CacheKey, Path]], positions: np.ndarray,
                 view: int, seed: int, opts: BuildOptions, extra: dict[str, Any],
                 with_indices: bool = False) -> None:
    """Fill the partial files of ``targets`` (one per stream) with rows for ``positions``
    (stored as dataset ``indices`` in rank shards)."""
    n, t, d = len(positions), dataset.source.num_frames, backbone.embed_dim
    files = {s: _open_partial(p, k, n, t, d, extra) for s, k, p in targets}
    try:
        for f in files.values():
            if with_indices and "indices" not in f:
                f.create_dataset("indices", data=positions.astype(np.int64))
        done = min(int(f.attrs["done"]) for f in files.values())
        items = max(1, opts.batch_size // max(1, t))
        loader = DataLoader(_SeededItems(dataset, positions[done:], view, seed),
                            batch_size=items, shuffle=False, num_workers=opts.num_workers,
                            collate_fn=_collate)
        desc = f"cache {dataset.split}/{','.join(files)}" + (f" v{view}" if dataset.train else "")
        was_training = backbone.training
        backbone.eval()
        try:
            with tqdm(total=n, initial=done, desc=desc, unit="item", disable=progress_off(opts.progress),
                      leave=False) as bar:
                start = done
                for batch in loader:
                    stop = start + len(batch["id"])
                    for s, f in files.items():
                        _write_chunk(f, backbone, batch, s, start, stop, t, opts.batch_size)
                    start = stop
                    bar.update(len(batch["id"]))
        finally:
            backbone.train(was_training)
        for f in files.values():
            if int(f.attrs["done"]) != n:
                raise RuntimeError(f"cache build wrote {f.attrs['done']} of {n} rows")
            store.seal(f)
            f.attrs["complete"] = True
    finally:
        for f in files.values():
            f.close()


def _write_chunk(f: h5py.File, backbone: Backbone, batch: dict[str, Any], stream: str,
                 start: int, stop: int, t: int, batch_size: int) -> None:
    """Rows ``start:stop`` of one stream's file, then the flushed ``done`` counter."""
    frames = batch["streams"][stream]
    if frames.shape[1] != t:
        raise ClapkitError(f"dataset stream '{stream}' gave {frames.shape[1]} frames per item, "
                           f"the source declares num_frames = {t}")
    feats = encode_frames(backbone, frames, batch_size)
    f["features"][start:stop] = feats.numpy().astype(np.float16)
    f["labels"][start:stop] = batch["label"].numpy()
    f["ids"][start:stop] = np.array(batch["id"], dtype=object)
    f.attrs["done"] = stop
    f.flush()


def _barrier(world_size: int) -> None:
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _merge(final: Path, key: CacheKey, world_size: int, n: int, t: int, d: int,
           extra: dict[str, Any], timeout: float, block: int = 4096) -> None:
    """Interleave the complete rank shards into ``final`` (rank r holds rows r::world_size)."""
    shards = [store.shard_path(final, r, world_size) for r in range(world_size)]
    deadline = time.monotonic() + timeout
    while True:
        missing = [str(p) for r, p in enumerate(shards)
                   if store.published_problem(p, key, len(range(r, n, world_size)))]
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise ClapkitError(f"cache: rank shards not complete after {timeout:.0f} s: "
                               + ", ".join(missing))
        time.sleep(0.5)
    part = store.partial_path(final)
    with store.create(part, key, num_items=n, num_frames=t, dim=d, extra=extra) as f:
        for r, sp in enumerate(shards):
            with h5py.File(sp, "r") as s:
                pos = s["indices"][...]
                if not np.array_equal(pos, np.arange(r, n, world_size)):
                    raise ClapkitError(f"cache shard {sp} holds other rows than rank {r} "
                                       f"of {world_size}")
                for a in range(0, len(pos), block):
                    b = min(a + block, len(pos))
                    rows = slice(r + a * world_size, r + (b - 1) * world_size + 1, world_size)
                    f["features"][rows] = s["features"][a:b]
                    f["labels"][rows] = s["labels"][a:b]
                    f["ids"][rows] = s["ids"].asstr()[a:b].astype(object)
        f.attrs["done"] = n
        store.seal(f)
        f.attrs["complete"] = True
    _publish(part, final)
    for sp in shards:
        sp.unlink(missing_ok=True)


def _backbone_label(backbone: Backbone) -> str:
    describe = getattr(backbone, "describe", None)
    return describe() if callable(describe) else type(backbone).__name__


def _check_request(source: DatasetSource, split: str, streams: Sequence[str], rank: int,
                   world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ClapkitError(f"cache: rank {rank} outside 0..{world_size - 1}")
    unknown = [s for s in streams if s not in source.streams]
    if unknown:
        raise ClapkitError(f"cache: stream(s) {', '.join(unknown)} not in the dataset "
                           f"(streams: {', '.join(source.streams)})")
    if split not in source.splits():
        raise ClapkitError(f"cache: split '{split}' not in the dataset "
                           f"(splits: {', '.join(source.splits())})")


def ensure_caches(backbone: Backbone, source: DatasetSource, split: str, *,
                  streams: Sequence[str] | None = None, train: bool = False, views: int = 1,
                  cache_dir: str | Path, batch_size: int = 64, seed: int = 0, rank: int = 0,
                  world_size: int = 1, **options: Any) -> list[Path]:
    """Cache files for every stream (default: all of the source's) and view of ``split``;
    builds the missing or unusable ones (all streams of a view in one pass over the data).

    ``train`` selects the backbone's training transform and random frame sampling; view ``k``
    is epoch ``k`` of that randomness (eval has the single view 0). Returns the paths,
    view-major, stream-minor. ``options``: the other :class:`BuildOptions` fields.

    With ``world_size > 1`` rank ``r`` encodes items ``r::world_size`` into its own shard and
    rank 0 merges and publishes. Under ``torch.distributed`` every rank returns after the
    merge; without it, ranks other than 0 return once their shard is written (rank 0 waits
    for the shards up to ``shard_timeout`` seconds).
    """
    streams = tuple(streams) if streams is not None else tuple(source.streams)
    _check_request(source, split, streams, rank, world_size)
    opts = BuildOptions(batch_size=batch_size, **options)
    bb_fp, ds_fp = backbone.fingerprint(), source.fingerprint(split)
    out: list[Path] = []
    for view in (range(views) if train else [0]):
        keys = {s: CacheKey(bb_fp, ds_fp, split, s, train, view, seed) for s in streams}
        paths = {s: store.cache_path(cache_dir, k) for s, k in keys.items()}
        out += [paths[s] for s in streams]
        _ensure_view(backbone, source, split, train, view, seed, keys, paths, opts,
                     rank, world_size)
    return out


def ensure_cache(backbone: Backbone, source: DatasetSource, split: str, *,
                 stream: str | None = None, train: bool = False, view: int = 0,
                 cache_dir: str | Path, batch_size: int = 64, seed: int = 0, rank: int = 0,
                 world_size: int = 1, **options: Any) -> Path:
    """The cache file of one stream (default: the source's only stream) and one view,
    built first when missing or unusable."""
    if stream is None:
        if len(source.streams) != 1:
            raise ClapkitError(f"cache: the dataset has streams {', '.join(source.streams)}; "
                               "name one")
        stream = source.streams[0]
    _check_request(source, split, [stream], rank, world_size)
    view = view if train else 0
    key = CacheKey(backbone.fingerprint(), source.fingerprint(split), split, stream, train,
                   view, seed)
    path = store.cache_path(cache_dir, key)
    _ensure_view(backbone, source, split, train, view, seed, {stream: key}, {stream: path},
                 BuildOptions(batch_size=batch_size, **options), rank, world_size)
    return path


def _stale(keys: dict[str, CacheKey], paths: dict[str, Path], n: int,
           warn: bool, items: str | None = None) -> list[str]:
    """Streams whose file must be (re)built: missing, damaged, another identity, or listing
    other items than the split (``items``: their digest) -- e.g. one of two stream files left
    from another item list; only that file is rebuilt, and the warning names it."""
    out = []
    for s, key in keys.items():
        problem = store.published_problem(paths[s], key, n, items)
        if problem is None:
            continue
        if problem != "missing" and warn:
            log.warning("cache file %s is unusable (%s); rebuilding it", paths[s], problem)
        out.append(s)
    return out


def _ensure_view(backbone: Backbone, source: DatasetSource, split: str, train: bool, view: int,
                 seed: int, keys: dict[str, CacheKey], paths: dict[str, Path],
                 opts: BuildOptions, rank: int, world_size: int) -> None:
    refs = source.refs(split)
    n = len(refs)
    items = store.items_digest([r.id for r in refs], [r.label for r in refs])
    if not _stale(keys, paths, n, warn=False, items=items):
        return
    dataset = ClipDataset(source, split, backbone.transform(train), train, seed=seed, refs=refs)
    dataset.set_epoch(view)
    t, d = source.num_frames, backbone.embed_dim
    base_extra = {"backbone": _backbone_label(backbone), "clapkit_version": _version()}

    if world_size == 1:
        with ExitStack() as stack:
            for s in sorted(keys):
                stack.enter_context(BuildLock(paths[s], opts.lock_timeout))
            todo = _stale(keys, paths, n, warn=True, items=items)  # another may have finished
            if not todo:
                return
            for s in todo:
                paths[s].unlink(missing_ok=True)
            targets = [(s, keys[s], store.partial_path(paths[s])) for s in todo]
            _encode_into(backbone, dataset, targets, np.arange(n), view, seed, opts, base_extra)
            for s in todo:
                _publish(store.partial_path(paths[s]), paths[s])
        return

    positions = np.arange(rank, n, world_size)
    shard_extra = {**base_extra, "rank": rank, "world_size": world_size}
    todo = _stale(keys, paths, n, warn=rank == 0, items=items)
    shards = {s: store.shard_path(paths[s], rank, world_size) for s in todo}
    with ExitStack() as stack:
        for s in sorted(shards):
            stack.enter_context(BuildLock(shards[s], opts.lock_timeout))
        need = [s for s in todo if store.published_problem(shards[s], keys[s], len(positions))]
        if need:
            targets = [(s, keys[s], store.partial_path(shards[s])) for s in need]
            _encode_into(backbone, dataset, targets, positions, view, seed, opts, shard_extra,
                         with_indices=True)
            for s in need:
                _publish(store.partial_path(shards[s]), shards[s])
    _barrier(world_size)
    if rank == 0:
        for s in todo:
            with BuildLock(paths[s], opts.lock_timeout):
                if store.published_problem(paths[s], keys[s], n, items) is None:
                    continue
                paths[s].unlink(missing_ok=True)
                _merge(paths[s], keys[s], world_size, n, t, d, base_extra, opts.shard_timeout)
    _barrier(world_size)


def _version() -> str:
    from .. import __version__
    return __version__
