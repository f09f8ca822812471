"""The on-disk format of one feature-cache file and the checks run on open.

One HDF5 file holds the features of one (backbone fingerprint, dataset fingerprint, split,
stream, transform, view):

- ``features`` float16 ``[N, T, D]``, chunked by rows and uncompressed (gzip makes random
  batch reads two orders of magnitude slower);
- ``labels`` int64 ``[N]``; ``ids`` variable-length str ``[N]``;
- root attributes: the identity (:class:`CacheKey`), shape facts, ``done`` (rows written, the
  resume counter) and ``complete``;
- integrity (format 2): ``crc32`` uint32 ``[ceil(N / crc_rows)]``, one CRC-32 per block of
  ``crc_rows`` feature rows (the chunk height), and ``items_sha256``, the digest of the ids and
  labels. Written when a file is sealed complete; :func:`verify` checks every block, opening a
  file (:func:`published_problem`) checks the items digest and a few sampled blocks, so
  flipped bytes are found, not only a damaged structure.

A file is only ever published complete (atomic rename), so anything else found at a final
path (unreadable, missing datasets, wrong shapes, ``done != N``, another identity) is stale or
damaged and gets rebuilt.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import h5py
import numpy as np

FORMAT = "clapkit-feature-cache"
FORMAT_VERSION = 2
#: feature blocks whose checksum is checked each time a file is opened
OPEN_SAMPLE_BLOCKS = 4
#: target bytes of one HDF5 chunk; small chunks keep random row reads cheap
CHUNK_BYTES = 1 << 16
#: HDF5 raw-data chunk cache per open dataset when reading
READ_CACHE_BYTES = 32 << 20

IDENTITY_ATTRS = ("format", "format_version", "backbone_fingerprint", "dataset_fingerprint",
                  "split", "stream", "mode", "view", "seed")


@attrs.frozen
class CacheKey:
    """What one cache file's content is a function of."""

    backbone_fingerprint: str
    dataset_fingerprint: str
    split: str
    stream: str
    train: bool = False
    view: int = 0
    seed: int = 0

    @property
    def mode(self) -> str:
        return "train" if self.train else "eval"

    def identity(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "backbone_fingerprint": self.backbone_fingerprint,
                "dataset_fingerprint": self.dataset_fingerprint, "split": self.split,
                "stream": self.stream, "mode": self.mode, "view": int(self.view),
                "seed": int(self.seed)}

    def file_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode())
        mode = f"train-v{self.view}" if self.train else "eval"
        return f"{_safe(self.split)}-{_safe(self.stream)}-{mode}-{digest.hexdigest()[:16]}.h5"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)[:40] or "_"


def cache_path(cache_dir: str | Path, key: CacheKey) -> Path:
    return Path(cache_dir) / key.file_name()


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def shard_path(path: Path, rank: int, world_size: int) -> Path:
    return path.with_name(f"{path.name}.shard{rank}of{world_size}")


def chunk_rows(num_frames: int, dim: int) -> int:
    return max(1, CHUNK_BYTES // (2 * max(1, num_frames) * max(1, dim)))


def create(path: Path, key: CacheKey, *, num_items: int, num_frames: int, dim: int,
           extra: dict[str, Any] | None = None) -> h5py.File:
    """A new, empty file (``done = 0``) open for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    f = h5py.File(path, "w")
    chunks = (min(num_items, chunk_rows(num_frames, dim)), num_frames, dim) if num_items else None
    f.create_dataset("features", shape=(num_items, num_frames, dim), dtype="float16",
                     chunks=chunks)
    f.create_dataset("labels", shape=(num_items,), dtype="int64")
    f.create_dataset("ids", shape=(num_items,), dtype=h5py.string_dtype())
    for k, v in {**key.identity(), **(extra or {})}.items():
        f.attrs[k] = v
    f.attrs.update({"num_items": num_items, "num_frames": num_frames, "embed_dim": dim,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "done": 0, "complete": False})
    f.flush()
    return f


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(f: h5py.File) -> dict[str, Any]:
    return {k: _attr(v) for k, v in f.attrs.items()}


def structure_problem(f: h5py.File) -> str | None:
    """What is wrong with an open file's datasets and counters, or None."""
    for name in ("features", "labels", "ids"):
        if name not in f:
            return f"dataset '{name}' is missing"
    a = read_attrs(f)
    for name in ("num_items", "num_frames", "embed_dim", "done", "format"):
        if name not in a:
            return f"attribute '{name}' is missing"
    if a["format"] != FORMAT:
        return f"not a clapkit feature cache (format {a['format']!r})"
    n, t, d = int(a["num_items"]), int(a["num_frames"]), int(a["embed_dim"])
    feats = f["features"]
    if feats.shape != (n, t, d) or feats.dtype != np.float16:
        return f"features are {feats.dtype}{list(feats.shape)}, expected float16{[n, t, d]}"
    if f["labels"].shape != (n,) or f["ids"].shape != (n,):
        return (f"labels/ids have {f['labels'].shape[0]}/{f['ids'].shape[0]} rows, "
                f"expected {n}")
    if not 0 <= int(a["done"]) <= n:
        return f"row counter done={a['done']} outside 0..{n}"
    return None


def identity_problem(f: h5py.File, key: CacheKey) -> str | None:
    a = read_attrs(f)
    for k, want in key.identity().items():
        if a.get(k) != want:
            return f"{k} is {a.get(k)!r}, expected {want!r}"
    return None


# --- integrity -----------------------------------------------------------------------------

def items_digest(ids: Sequence[str], labels: Sequence[int] | np.ndarray) -> str:
    """SHA-256 of an item list (ids in order, then labels as int64)."""
    h = hashlib.sha256()
    h.update("\n".join(str(i) for i in ids).encode())
    h.update(b"\0")
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _block_crcs(feats: h5py.Dataset | np.ndarray, rows: int,
                blocks: Iterable[int]) -> dict[int, int]:
    n = feats.shape[0]
    return {b: zlib.crc32(np.ascontiguousarray(feats[b * rows:min(n, (b + 1) * rows)])
                          .tobytes()) for b in blocks}


def seal(f: h5py.File) -> None:
    """Write the checksums of a fully written file (features per block, ids and labels)."""
    feats = f["features"]
    n = feats.shape[0]
    rows = feats.chunks[0] if feats.chunks else max(1, n)
    nblocks = -(-n // rows) if n else 0
    crcs = _block_crcs(feats, rows, range(nblocks))
    if "crc32" in f:
        del f["crc32"]
    f.create_dataset("crc32", data=np.array([crcs[b] for b in range(nblocks)], np.uint32))
    f.attrs["crc_rows"] = rows
    f.attrs["items_sha256"] = items_digest(f["ids"].asstr()[...], f["labels"][...])


def sample_blocks(nblocks: int, k: int = OPEN_SAMPLE_BLOCKS) -> list[int]:
    """First, last and evenly spaced blocks in between (deterministic)."""
    if nblocks <= k:
        return list(range(nblocks))
    return sorted({round(i * (nblocks - 1) / (k - 1)) for i in range(k)})


def integrity_problem(f: h5py.File, blocks: Iterable[int] | None = None, *,
                      finite: bool = True) -> str | None:
    """Checksums of an open, structurally sound file: the items digest always, the feature
    blocks ``blocks`` (None = all), which must also be finite unless ``finite`` is false."""
    a = read_attrs(f)
    if "crc32" not in f or "crc_rows" not in a or "items_sha256" not in a:
        return "no checksums (written by an older clapkit or never sealed)"
    if items_digest(f["ids"].asstr()[...], f["labels"][...]) != a["items_sha256"]:
        return "ids or labels do not match their checksum (corrupted)"
    feats, rows, stored = f["features"], int(a["crc_rows"]), f["crc32"][...]
    nblocks = -(-feats.shape[0] // rows) if feats.shape[0] else 0
    if len(stored) != nblocks:
        return f"{len(stored)} feature checksums for {nblocks} blocks"
    for b in (range(nblocks) if blocks is None else blocks):
        block = feats[b * rows:(b + 1) * rows]
        lo, hi = b * rows, b * rows + len(block) - 1
        if finite and not np.isfinite(block).all():
            return f"non-finite features in rows {lo}..{hi}"
        if zlib.crc32(np.ascontiguousarray(block).tobytes()) != int(stored[b]):
            return f"feature bytes in rows {lo}..{hi} do not match their checksum (corrupted)"
    return None


def name_problem(path: Path, f: h5py.File) -> str | None:
    """Whether the identity attributes give back the file's name (a renamed or edited file
    claims to be something it is not)."""
    a = read_attrs(f)
    try:
        key = CacheKey(str(a["backbone_fingerprint"]), str(a["dataset_fingerprint"]),
                       str(a["split"]), str(a["stream"]), a["mode"] == "train", int(a["view"]),
                       int(a["seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        return f"identity attribute missing or malformed ({exc})"
    want = key.file_name()
    if path.name != want and not path.name.startswith(want + ".shard"):
        return f"identity attributes belong to a file named {want}, not {path.name}"
    return None


def published_problem(path: Path, key: CacheKey | None = None,
                      num_items: int | None = None, items: str | None = None) -> str | None:
    """Why ``path`` cannot be used as a complete cache (for ``key``, holding ``num_items``
    items whose :func:`items_digest` is ``items``), or None if it can."""
    if not path.is_file():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            problem = structure_problem(f)
            if problem:
                return problem
            a = read_attrs(f)
            if int(a["done"]) != int(a["num_items"]) or not bool(a.get("complete")):
                return f"incomplete: {a['done']} of {a['num_items']} rows written"
            if num_items is not None and int(a["num_items"]) != num_items:
                return f"holds {a['num_items']} items, the split has {num_items}"
            problem = identity_problem(f, key) if key is not None else None
            if problem:
                return problem
            rows = int(a.get("crc_rows", 0) or 1)
            n = int(a["num_items"])
            problem = integrity_problem(f, sample_blocks(-(-n // rows) if n else 0))
            if problem is None and items is not None and a["items_sha256"] != items:
                return ("lists other items than the dataset split (ids or labels differ): "
                        "it is stale")
            return problem
    except (OSError, KeyError, ValueError) as exc:
        return f"unreadable HDF5 file ({type(exc).__name__}: {exc})"


@attrs.frozen
class CacheInfo:
    """What ``clapkit cache info`` shows."""

    path: Path
    attributes: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None
    size_bytes: int
    problem: str | None

    def lines(self) -> list[str]:
        a = self.attributes
        out = [f"file:        {self.path}",
               f"status:      {'complete' if self.problem is None else 'BAD: ' + self.problem}",
               f"features:    {self.dtype} {list(self.shape)} (chunks {self.chunks})",
               f"size:        {self.size_bytes / 2**20:.2f} MiB",
               f"rows done:   {a.get('done')} of {a.get('num_items')}"]
        for k in ("split", "stream", "mode", "view", "seed", "backbone", "backbone_fingerprint",
                  "dataset_fingerprint", "created", "clapkit_version", "format_version"):
            if k in a:
                out.append(f"{(k + ':'):<13}{a[k]}")
        return out


def info(path: str | Path) -> CacheInfo:
    path = Path(path)
    problem = published_problem(path)
    attributes: dict[str, Any] = {}
    shape: tuple[int, ...] = ()
    dtype, chunks = "?", None
    try:
        with h5py.File(path, "r") as f:
            attributes = read_attrs(f)
            if "features" in f:
                shape, dtype, chunks = f["features"].shape, str(f["features"].dtype), \
                    f["features"].chunks
    except (OSError, KeyError, ValueError):
        pass
    size = os.path.getsize(path) if path.exists() else 0
    return CacheInfo(path, attributes, tuple(shape), dtype, chunks, size, problem)


def verify(path: str | Path) -> str | None:
    """Full check: structure, counters, identity against the file name, ids unique and
    non-empty, every feature block finite and matching its checksum."""
    path = Path(path)
    problem = published_problem(path)
    if problem:
        return problem
    with h5py.File(path, "r") as f:
        problem = name_problem(path, f)
        if problem:
            return problem
        ids = f["ids"].asstr()[...]
        if any(not i for i in ids):
            return "empty id found"
        if len(set(ids)) != len(ids):
            return "duplicate ids"
        return integrity_problem(f, None)
