"""Face boxes for datasets that ship none: OpenCV's bundled Haar cascade.

``detect_dataset_faces(source)`` writes boxes in the layout the source reads back: one box
per clip (CAER, CAER-S, DAiSEE; the median of the detections over a few evenly spaced
frames, robust to a missed or spurious frame) or one box per frame (RAER). Items without any
detection are left out, so the loader counts them and falls back to the centre crop.
OpenCV is an optional extra (``pip install 'clapkit[faces]'``), imported only here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import atomic_write_text
from ..errors import ClapkitError
from .boxes import Box, normalize_key
from .sampling import segment_indices
from .sources import ClipSource
from .video import read_clip

CASCADE = "haarcascade_frontalface_default.xml"


class HaarFaceDetector:
    """Largest frontal face by OpenCV's Haar cascade."""

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 4) -> None:
        try:
            import cv2
        except ImportError:
            raise ClapkitError("face detection needs OpenCV, an optional extra: "
                               "pip install 'clapkit[faces]'") from None
        data = getattr(cv2, "data", None)
        path = Path(getattr(data, "haarcascades", "")) / CASCADE
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ClapkitError(f"OpenCV {cv2.__version__} has no {CASCADE} at {path}; "
                               f"install opencv-python-headless 4.x: "
                               f"pip install 'clapkit[faces]'")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def __call__(self, image: Image.Image) -> Box | None:
        gray = np.asarray(image.convert("L"))
        side = max(12, min(gray.shape) // 12)
        faces = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                               minNeighbors=self.min_neighbors,
                                               minSize=(side, side))
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
        return (float(x), float(y), float(x + w), float(y + h))


def detect_dataset_faces(source: ClipSource, splits: Iterable[str] | None = None,
                         detector: Callable[[Image.Image], Box | None] | None = None,
                         frames_per_clip: int = 3,
                         progress: Callable[[Iterable[Any]], Iterable[Any]] = iter
                         ) -> tuple[dict[str, Any], int, int]:
    """``(box table, items with a face, items)`` for ``splits`` (default: all)."""
    if not isinstance(source, ClipSource):
        raise ClapkitError(f"{getattr(source, 'name', source)}: face detection applies to "
                           f"face/context datasets (caer, caer_s, daisee, raer)")
    detector = detector or HaarFaceDetector()
    table: dict[str, Any] = {}
    found = total = 0
    for split in splits or source.splits():
        keys = source.box_keys(split)
        for ref in progress(source.refs(split)):
            total += 1
            key = normalize_key(keys[ref.id])
            if source.box_layout == "frame":
                frames, names = read_clip(Path(ref.path), lambda n: list(range(n)),
                                          ref.num_frames)
                per = {nm: [round(v, 1) for v in b] for nm, f in zip(names, frames)
                       if (b := detector(f)) is not None}
                if per:
                    table[key] = per
                    found += 1
                continue
            frames, _ = read_clip(
                Path(ref.path), lambda n: sorted(set(segment_indices(n, frames_per_clip,
                                                                     False))),
                ref.num_frames)
            boxes = [b for f in frames if (b := detector(f)) is not None]
            if boxes:
                table[key] = [round(float(v), 1) for v in np.median(np.array(boxes), axis=0)]
                found += 1
    return table, found, total


def write_box_file(table: dict[str, Any], out: Path, force: bool = False) -> None:
    """Write atomically; never replace an existing file unless ``force``."""
    if out.exists() and not force:
        raise ClapkitError(f"{out} exists; pass --force to replace it")
    atomic_write_text(out, json.dumps(table, sort_keys=True))
