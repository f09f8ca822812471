"""Shared bases of the dataset plugins: clips with face/context streams, and still images.

A plugin lists its items in its published layout (:meth:`ClipSource.scan`); the base attaches
face/body boxes through :class:`~clapkit.data.boxes.BoxIndex` (counting and reporting the
items that fall back to a centre crop), samples frames TSN-style and cuts the streams:

* ``face``: the face box grown by ``box_margin`` and squared (centre crop when no box);
* ``context``: the full frame, or the body box with ``crop_body``, letterboxed to a square so
  the backbone's centre crop keeps the whole scene.

Both streams come from one read of the clip.
"""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from PIL import Image

from ..errors import ClapkitError
from ..validators import size
from .base import DatasetSource, ItemRef, file_identity
from .boxes import (Box, BoxIndex, BoxReport, box_for_frame, clip_box, crop, frame_boxes,
                    letterbox)
from .sampling import segment_indices
from .video import read_clip, read_image, resolve_clip

log = logging.getLogger("clapkit.data")


@attrs.frozen
class ClipItem:
    """One item as a plugin's scan finds it: ``box_key`` is the path its boxes are filed under."""

    id: str
    label: int
    path: Path
    num_frames: int | None = None
    box_key: str = ""


@attrs.frozen
class CropOptions:
    """What a face/context source needs of its recipe options."""

    num_frames: int = 16
    crop_body: bool = False
    box_margin: float = 0.15
    fallback_scale: float = 0.7
    strict_boxes: bool = False


_v = attrs.validators


@attrs.frozen(kw_only=True)
class ClipConfig:
    """Recipe options every face/context dataset shares (plugin configs extend it).

    ``num_frames``: frames per clip after TSN sampling; ``crop_body``: the context stream is
    the body box (when the dataset has one) instead of the full frame; ``box_margin``: added
    to each side of a face box, as a fraction of its size; ``fallback_scale``: side of the
    centred square used when an item has no face box, as a fraction of the shorter frame
    side; ``strict_boxes``: a missing face box is an error instead of that fallback.
    """

    num_frames: int = attrs.field(default=16, validator=size(1_024))   # per item, per stream
    crop_body: bool = False
    box_margin: float = attrs.field(default=0.15, validator=[_v.ge(0.0), _v.le(2.0)])
    fallback_scale: float = attrs.field(default=0.7, validator=[_v.gt(0.0), _v.le(1.0)])
    strict_boxes: bool = False

    def crop_options(self) -> CropOptions:
        return CropOptions(self.num_frames, self.crop_body, self.box_margin,
                           self.fallback_scale, self.strict_boxes)


class ClipSource(DatasetSource):
    """Items that yield ``face`` and ``context`` streams (videos, or stills with T=1)."""

    streams: tuple[str, ...] = ("face", "context")
    #: ``"clip"``: one face box per item; ``"frame"``: ``{frame_file: box}`` per item (RAER)
    box_layout: str = "clip"
    #: dataset name used in messages
    name: str = "dataset"

    def __init__(self, classes: list[str], opts: CropOptions, face_file: Path | None,
                 body_file: Path | None = None, face_file_given: bool = False) -> None:
        self.classes = list(classes)
        self.opts = opts
        self.num_frames = opts.num_frames
        self.face_file, self.body_file = face_file, body_file
        self.face_file_given = face_file_given
        self.box_reports: dict[str, BoxReport] = {}
        self._refs: dict[str, list[ItemRef]] = {}
        self._box_keys: dict[str, dict[str, str]] = {}
        self._indexes: dict[str, BoxIndex | None] = {}

    # -- to implement --------------------------------------------------------------------
    @abstractmethod
    def scan(self, split: str) -> list[ClipItem]:
        """Items of ``split`` in list order (paths absolute, labels 0-based)."""

    # -- boxes ---------------------------------------------------------------------------
    def _index(self, which: str) -> BoxIndex | None:
        if which not in self._indexes:
            file = self.face_file if which == "face" else self.body_file
            if file is not None and file.is_file():
                self._indexes[which] = BoxIndex.load(file)
            else:
                if file is not None and (which == "body" or self.face_file_given):
                    log.warning("%s: %s box file %s not found; items fall back to %s",
                                self.name, which, file,
                                "a centre crop" if which == "face" else "the full frame")
                self._indexes[which] = None
        return self._indexes[which]

    def _parse(self, index: BoxIndex, key: str, layout: str) -> Any:
        match = index.match(key)
        if match is None:
            return None
        raw = index.get(match)
        where = f"{index.source}: entry '{match}'"
        if layout == "frame" or isinstance(raw, Mapping):
            return frame_boxes(raw, where)
        return clip_box(raw, where)

    def refs(self, split: str) -> list[ItemRef]:
        if split not in self._refs:
            self._refs[split] = self._make_refs(split)
        return list(self._refs[split])

    def box_keys(self, split: str) -> dict[str, str]:
        """item id -> the path its boxes are filed under (what a box file is keyed by)."""
        self.refs(split)
        return dict(self._box_keys[split])

    def _make_refs(self, split: str) -> list[ItemRef]:
        items = self.scan(split)
        self._box_keys[split] = {it.id: it.box_key for it in items}
        face_idx = self._index("face")
        body_idx = self._index("body") if self.opts.crop_body else None
        faces = BoxReport(self.name, split, "face", face_idx.source if face_idx else None)
        bodies = BoxReport(self.name, split, "body", body_idx.source if body_idx else None)
        out = []
        for it in items:
            boxes: dict[str, Any] = {}
            face = self._parse(face_idx, it.box_key, self.box_layout) if face_idx else None
            if face:
                boxes["face"] = face
            faces.add(it.id, bool(face))
            if self.opts.crop_body:
                body = self._parse(body_idx, it.box_key, "clip") if body_idx else None
                if body:
                    boxes["body"] = body
                bodies.add(it.id, bool(body))
            out.append(ItemRef(it.id, it.label, str(it.path), it.num_frames, boxes))
        self.box_reports[split] = faces
        if items:
            faces.log()
            if self.opts.crop_body:
                bodies.log()
        if self.opts.strict_boxes and faces.missing:
            raise faces.strict_error()
        return out

    # -- loading -------------------------------------------------------------------------
    def load(self, ref: ItemRef, train: bool, rng: random.Random) -> dict[str, list[Image.Image]]:
        frames, names = read_clip(
            Path(ref.path), lambda n: segment_indices(n, self.num_frames, train, rng),
            ref.num_frames)
        face, body = ref.boxes.get("face"), ref.boxes.get("body")
        o = self.opts
        face_crops = [crop(f, _pick(face, nm, i), o.box_margin, o.fallback_scale)
                      for i, (f, nm) in enumerate(zip(frames, names))]
        if tuple(self.streams) == ("image",):
            return {"image": face_crops}
        context = []
        for i, (f, nm) in enumerate(zip(frames, names)):
            b = _pick(body, nm, i) if o.crop_body else None
            context.append(letterbox(crop(f, b, 0.0, 1.0, square=False) if b else f))
        return {"face": face_crops, "context": context}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **attrs.asdict(self.opts)}

    def media_identity(self, ref: ItemRef) -> str:
        """The identity of the video file or frame folder :func:`read_clip` would read."""
        try:
            return file_identity(resolve_clip(Path(ref.path)))
        except ClapkitError:
            return "-"


def _pick(entry: Any, name: str, index: int) -> Box | None:
    if entry is None:
        return None
    if isinstance(entry, Mapping):
        return box_for_frame(entry, name, index)
    return tuple(entry)  # type: ignore[return-value]


class ImageSource(DatasetSource):
    """Still images with one ``image`` stream (class-incremental datasets)."""

    streams: tuple[str, ...] = ("image",)
    num_frames = 1

    def load(self, ref: ItemRef, train: bool, rng: random.Random) -> dict[str, list[Image.Image]]:
        return {"image": [self.image(ref)]}

    def image(self, ref: ItemRef) -> Image.Image:
        return read_image(ref.path)


def check_split(source: DatasetSource, split: str) -> None:
    """Unknown split -> error naming the splits on disk."""
    if split not in source.splits():
        raise ClapkitError(f"{getattr(source, 'name', type(source).__name__)}: no split "
                           f"'{split}' (splits found: {', '.join(source.splits()) or 'none'})")
