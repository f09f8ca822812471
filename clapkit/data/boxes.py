"""Face / body boxes: reading box files, matching their keys to items, cropping.

Why one module: the seed's loaders each parsed box files their own way and the keys
("CAER/train/Anger/0001" in the file vs "train/Anger/0001.avi" in the annotation list)
silently never matched, so every clip quietly fell back to the full frame. Here every dataset
goes through :class:`BoxIndex`, which normalises keys (separators, ``./``, extensions) and
matches on whole path segments, and every fallback is counted and reported
(:class:`BoxReport`), or is an error with ``strict_boxes``.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the original frame.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from PIL import Image

from ..errors import ClapkitError

log = logging.getLogger("clapkit.data")

Box = tuple[float, float, float, float]

#: extensions stripped from the last segment of a key (case-insensitive)
MEDIA_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_EXT_RE = re.compile("(" + "|".join(re.escape(e) for e in MEDIA_EXTENSIONS) + ")$", re.I)


def normalize_key(key: str) -> str:
    """``'./CAER\\train//Anger/0001.avi '`` -> ``'CAER/train/Anger/0001'``; a file named
    like its folder (``1100011002/1100011002.avi``) stands for the folder."""
    k = str(key).strip().replace("\\", "/")
    parts = [p for p in k.split("/") if p not in ("", ".")]
    if parts:
        parts[-1] = _EXT_RE.sub("", parts[-1])
    if len(parts) > 1 and parts[-1] == parts[-2]:  # DAiSEE: <clip>/<clip>.avi is the clip
        parts.pop()
    return "/".join(parts)


def frame_key(name: str) -> str:
    """Key of one frame inside a per-frame box table: the stem, leading zeros dropped
    for numeric names, so ``00001.jpg``, ``1.jpg`` and ``1`` agree."""
    stem = normalize_key(name).rsplit("/", 1)[-1]
    return str(int(stem)) if stem.isdigit() else stem


def as_box(value: Any, where: str) -> Box:
    """Validate one ``[x1, y1, x2, y2]`` entry."""
    if (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        x1, y1, x2, y2 = (float(v) for v in value)
        if x2 > x1 and y2 > y1:
            return (x1, y1, x2, y2)
    raise ClapkitError(f"{where}: expected a box [x1, y1, x2, y2] with x2 > x1 and y2 > y1, "
                       f"got {value!r}")


class BoxIndex:
    """The entries of one box JSON, looked up by item path.

    A lookup of ``train/Anger/0001.avi`` finds the entry whose normalised key ends with the
    item's normalised path on a segment boundary (``CAER/train/Anger/0001`` matches, so
    does ``/data/CAER/train/Anger/0001.avi``) when exactly one key does; failing that, the
    longest key that is itself a trailing part of the item path (``1100011002`` for
    ``Train/110001/1100011002``). Ambiguous matches are never taken.
    """

    def __init__(self, entries: Mapping[str, Any], source: str = "<boxes>") -> None:
        self.source = source
        self._exact: dict[str, Any] = {}
        self._by_suffix: dict[str, list[str]] = {}
        for raw_key, value in entries.items():
            key = normalize_key(raw_key)
            self._exact[key] = value
            parts = key.split("/")
            for i in range(len(parts)):
                self._by_suffix.setdefault("/".join(parts[i:]), []).append(key)

    def __len__(self) -> int:
        return len(self._exact)

    def match(self, item_path: str) -> str | None:
        """The normalised key of the entry for ``item_path``, or None."""
        p = normalize_key(item_path)
        if p in self._exact:
            return p
        owners = self._by_suffix.get(p)
        if owners and len(set(owners)) == 1:
            return owners[0]
        parts = p.split("/")
        for i in range(1, len(parts)):
            tail = "/".join(parts[i:])
            if tail in self._exact and len(set(self._by_suffix.get(tail, ()))) == 1:
                return tail
        return None

    def get(self, item_path: str) -> Any | None:
        key = self.match(item_path)
        return None if key is None else self._exact[key]

    @classmethod
    def load(cls, path: Path) -> BoxIndex:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ClapkitError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ClapkitError(f"{path}: expected a JSON object mapping clip paths to boxes")
        return cls(data, str(path))


def clip_box(value: Any, where: str) -> Box | None:
    """A per-clip entry: a box, or None when absent."""
    return None if value is None else as_box(value, where)


def frame_boxes(value: Any, where: str) -> dict[str, Box] | None:
    """A per-frame entry ``{frame_file: box}`` -> ``{frame_key: box}``; a single box is
    accepted as the box of every frame (stored under ``"*"``)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {frame_key(k): as_box(v, f"{where}[{k!r}]") for k, v in value.items()}
    return {"*": as_box(value, where)}


def box_for_frame(boxes: Mapping[str, Box] | None, name: str, index: int) -> Box | None:
    """The box of frame ``name`` (file name) / ``index`` in a per-frame table: its own
    entry, else the entry of the nearest numbered frame, else the clip-wide ``"*"`` entry."""
    if not boxes:
        return None
    k = frame_key(name)
    if k in boxes:
        return boxes[k]
    if "*" in boxes:
        return boxes["*"]
    target = int(k) if k.isdigit() else index
    numbered = [(abs(int(f) - target), f) for f in boxes if f.isdigit()]
    return boxes[min(numbered)[1]] if numbered else None


# --- geometry ----------------------------------------------------------------------------

def expand_box(box: Box, margin: float, width: int, height: int,
               square: bool = True) -> tuple[int, int, int, int]:
    """Grow ``box`` by ``margin`` x its size on each side, optionally to a square, then fit
    it inside the frame (shifting before shrinking), as integer pixel edges."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    x1, x2 = x1 - margin * w, x2 + margin * w
    y1, y2 = y1 - margin * h, y2 + margin * h
    if square:
        side = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, x2, y1, y2 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    ix1, ix2 = _fit(x1, x2, width)
    iy1, iy2 = _fit(y1, y2, height)
    return ix1, iy1, ix2, iy2


def _fit(a: float, b: float, size: int) -> tuple[int, int]:
    """Integer span of length round(b - a) (at least 1, at most ``size``) inside [0, size],
    moved rather than cut when it sticks out on one side."""
    length = min(max(1, int(round(b - a))), size)
    start = min(max(int(round(a)), 0), size - length)
    return start, start + length


def centre_box(width: int, height: int, scale: float) -> Box:
    """The fallback crop: a centred square of ``scale`` x the shorter side."""
    side = max(1.0, scale * min(width, height))
    cx, cy = width / 2, height / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def crop(image: Image.Image, box: Box | None, margin: float, fallback_scale: float,
         square: bool = True) -> Image.Image:
    """The box region of ``image`` (grown by ``margin``), or the centre crop when None."""
    w, h = image.size
    if box is None:
        box, margin = centre_box(w, h, fallback_scale), 0.0
    return image.crop(expand_box(box, margin, w, h, square=square))


def letterbox(image: Image.Image, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Pad to a square (centred) so the backbone's centre crop keeps the whole scene."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new("RGB", (side, side), fill)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


# --- reporting ---------------------------------------------------------------------------

@attrs.define
class BoxReport:
    """How many items of a split found their box; the rest fall back to what the stream
    uses without one (:attr:`fallback`): a face takes a centred square crop, a body (the
    context stream with ``crop_body``) takes the full frame, letterboxed."""

    dataset: str
    split: str
    kind: str                       # "face" or "body"
    source: str | None              # the box file, None when none was given / found
    total: int = 0
    missing: list[str] = attrs.field(factory=list)

    @property
    def found(self) -> int:
        return self.total - len(self.missing)

    @property
    def fallback(self) -> str:
        """What an item without a box of this kind is cut to (see ClipSource.load)."""
        return "the full frame" if self.kind == "body" else "a centre crop"

    def add(self, item_id: str, found: bool) -> None:
        self.total += 1
        if not found:
            self.missing.append(item_id)
            log.debug("%s %s: no %s box for %s in %s, using %s", self.dataset,
                      self.split, self.kind, item_id, self.source or "<no box file>",
                      self.fallback)

    def summary(self) -> str:
        where = self.source or "no box file"
        msg = (f"{self.dataset} split '{self.split}': {len(self.missing)} of {self.total} "
               f"items have no {self.kind} box ({where})")
        if self.missing:
            msg += f"; they use {self.fallback} (first: {', '.join(self.missing[:3])})"
        return msg

    def log(self) -> None:
        if self.missing:
            log.warning(self.summary())
        else:
            log.info(self.summary())

    def strict_error(self) -> ClapkitError:
        first = self.missing[0]
        where = (f"box file {self.source}" if self.source else
                 "no box file (set face_boxes, or run `clapkit data detect-faces`)")
        return ClapkitError(f"{self.dataset} split '{self.split}': no {self.kind} box for clip "
                            f"'{first}' in {where} ({len(self.missing)} of {self.total} "
                            f"missing); strict_boxes = true forbids the fallback to "
                            f"{self.fallback}")
