"""The dataset contract: a *source* lists items of a split and loads their frames per stream.

A dataset plugin's factory returns a :class:`DatasetSource`. The core wraps a split of it in
:class:`ClipDataset`, which applies the backbone's transform and yields

    {"id": str, "label": int, "index": int, "streams": {stream: Tensor[T,3,H,W]}}

(and, for items that carry text, ``"texts"``: the item's captions and ``"group"``: the id
of what they describe -- positives of image-text objectives are "same group", not "same
row"; both collate to lists: see :func:`collate_items`).

A still image is a clip with T=1 and one stream (``"image"``). Batches collate to
``{"id": list[str], "label": Tensor[B], "index": Tensor[B], "streams": {s: Tensor[B,T,3,H,W]}}``;
the feature cache serves the same batches with ``"features": {s: Tensor[B,T,D]}`` instead of
``"streams"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from PIL import Image

from ..errors import ClapkitError


@attrs.frozen
class ItemRef:
    """One item of a split, before any pixel is read.

    ``id`` is stable and unique within the split (the relative path without extension); it is
    the key of the feature cache. ``boxes`` maps a stream to its crop box(es): one
    ``(x1, y1, x2, y2)`` for the clip, or a per-frame dict; absent = fallback crop.
    ``texts``: captions of the item (listed with the items, as face boxes are; the feature
    cache does not hold them, so captions can change without a rebuild); ``group``: the id
    of the image they describe (default: the item's ``id``).
    """

    id: str
    label: int
    path: str
    num_frames: int | None = None
    boxes: dict[str, Any] = attrs.field(factory=dict, eq=False, hash=False)
    texts: tuple[str, ...] = attrs.field(default=(), converter=tuple, eq=False, hash=False)
    group: str | None = attrs.field(default=None, eq=False, hash=False)


#: item keys that collate to plain lists (ragged: a caption count per item)
LIST_KEYS = ("texts", "group")


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of the tensors and scalars; :data:`LIST_KEYS` stay lists."""
    lists = {k: [it.pop(k) for it in items] for k in LIST_KEYS if items and k in items[0]}
    out = torch.utils.data.default_collate(items)
    out.update(lists)
    return out


class WithTexts(torch.utils.data.Dataset):
    """Items of ``dataset`` (pixels or cached features) with their refs' ``texts`` and
    ``group`` added by ``index``: one place serves text to both paths."""

    def __init__(self, dataset: Any, refs: Sequence[ItemRef]) -> None:
        self.dataset, self.refs = dataset, list(refs)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        ref = self.refs[int(item["index"])]
        item["texts"] = list(ref.texts)
        item["group"] = ref.group if ref.group is not None else ref.id
        return item


class DatasetSource(ABC):
    """A dataset in its published on-disk layout."""

    #: class names, index = label
    classes: list[str]
    #: stream names each item yields, e.g. ("image",) or ("face", "context")
    streams: tuple[str, ...] = ("image",)
    #: frames per item after sampling (1 for images)
    num_frames: int = 1

    @abstractmethod
    def splits(self) -> list[str]:
        """Split names present on disk (``train``, ``valid``, ``test``, ...)."""

    @abstractmethod
    def refs(self, split: str) -> list[ItemRef]:
        """Items of ``split`` in a stable order."""

    @abstractmethod
    def load(self, ref: ItemRef, train: bool, rng: random.Random) -> dict[str, list[Image.Image]]:
        """The sampled frames of ``ref`` per stream (RGB PIL images, ``num_frames`` each).

        ``train`` selects random-per-segment frame sampling; eval takes segment centres.
        """

    def fingerprint(self, split: str) -> str:
        """Stable id of what ``split`` yields: items, labels, boxes, sampling options and the
        cheap identity of the media files (:meth:`media_identity`), so a replaced or deleted
        video changes it and a feature cache built from the old one is not reused."""
        h = hashlib.sha256()
        h.update(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        seen: dict[str, str] = {}
        for r in self.refs(split):
            if r.path not in seen:
                seen[r.path] = self.media_identity(r)
            h.update(f"{r.id}\t{r.label}\t{r.num_frames}\t"
                     f"{json.dumps(r.boxes, sort_keys=True, default=str)}\t"
                     f"{seen[r.path]}\n".encode())
        return h.hexdigest()[:16]

    def media_identity(self, ref: ItemRef) -> str:
        """Size and modification time of the file behind ``ref.path`` (a frame folder: its
        mtime, number of entries and a digest of their sizes and mtimes; no such path:
        ``"-"``). Costs one ``stat`` per file; a plugin whose items are not files overrides
        it."""
        return file_identity(ref.path)

    def describe(self) -> dict[str, Any]:
        """Options that change what items yield (part of the fingerprint)."""
        return {"type": type(self).__name__, "classes": self.classes,
                "streams": list(self.streams), "num_frames": self.num_frames}

    def class_counts(self, split: str) -> list[int]:
        counts = [0] * len(self.classes)
        for r in self.refs(split):
            counts[r.label] += 1
        return counts


def file_identity(path: str | os.PathLike) -> str:
    """``size:mtime_ns`` of a file, ``dir:mtime_ns:entries:digest`` of a folder, ``-`` if
    absent. A frame folder's digest covers the name, size and mtime of every entry
    (:func:`entries_digest`): a frame overwritten in place changes neither the folder's
    mtime nor its entry count, but it changes this."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return "-"
    if stat.S_ISDIR(st.st_mode):
        n, digest = entries_digest(path)
        return f"dir:{st.st_mtime_ns}:{n}:{digest}"
    return f"{st.st_size}:{st.st_mtime_ns}"


def entries_digest(folder: str | os.PathLike) -> tuple[int, str]:
    """``(entries, digest)`` of a folder: sha256 over each entry's name, size and
    ``mtime_ns`` in name order (one ``stat`` per entry, no file read); ``(-1, "-")`` when
    the folder cannot be listed."""
    h = hashlib.sha256()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return -1, "-"
    for e in entries:
        try:
            st = e.stat()
            h.update(f"{e.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{e.name}\t-\n".encode())
    return len(entries), h.hexdigest()[:16]


def classes_without_items(source: DatasetSource, split: str) -> list[str]:
    """Names of the classes with no item in ``split``."""
    return [source.classes[c] for c, n in enumerate(source.class_counts(split)) if n == 0]


def require_items_per_class(source: DatasetSource, split: str) -> None:
    """A class with no training items cannot be learnt (and silently skews every per-class
    metric): an error naming the class(es)."""
    empty = classes_without_items(source, split)
    if empty:
        name = getattr(source, "name", type(source).__name__)
        raise ClapkitError(f"{name}: class{'es' if len(empty) > 1 else ''} "
                           f"{', '.join(repr(c) for c in empty[:5])}"
                           f"{' and more' if len(empty) > 5 else ''} ha"
                           f"{'ve' if len(empty) > 1 else 's'} no items in split '{split}' "
                           f"({sum(source.class_counts(split))} items over "
                           f"{len(source.classes)} classes); add items or drop the class")


class ClipDataset(torch.utils.data.Dataset):
    """A split of a source as tensors: the backbone transform applied to every frame.

    Random frame sampling in training draws from ``random.Random(seed, epoch, index)`` so an
    epoch is reproducible and a resumed run sees the same frames.
    """

    def __init__(self, source: DatasetSource, split: str,
                 transform: Callable[[Image.Image], torch.Tensor], train: bool,
                 seed: int = 0, refs: Sequence[ItemRef] | None = None) -> None:
        self.source, self.split, self.transform, self.train = source, split, transform, train
        self.refs = list(refs) if refs is not None else source.refs(split)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.refs[index]
        rng = random.Random(hash((self.seed, self.epoch, index)) if self.train else index)
        frames = self.source.load(ref, self.train, rng)
        streams = {s: torch.stack([self.transform(im) for im in frames[s]])
                   for s in self.source.streams}
        return {"id": ref.id, "label": ref.label, "index": index, "streams": streams}

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.refs]
