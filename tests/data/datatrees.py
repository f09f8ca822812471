"""Helpers of the dataset tests: tiny trees written in each published layout.

(A uniquely named module rather than ``conftest`` so that ``from datatrees import ...`` can
never pick up another folder's conftest.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from clapkit.data.video import write_video

GRAY = (128, 128, 128)
RED = (220, 30, 30)
BOX = [20, 10, 40, 30]           # a square box in a 64x48 frame
FRAME = (64, 48)


def frames_with_box(n: int, box=BOX, size=FRAME, marker: bool = True) -> list[np.ndarray]:
    """Gray frames with a red square in ``box``; frame i has i in the top-left pixel row
    brightness so indices can be told apart after decoding."""
    out = []
    for i in range(n):
        a = np.full((size[1], size[0], 3), GRAY, np.uint8)
        x1, y1, x2, y2 = box
        a[y1:y2, x1:x2] = RED
        if marker:
            a[size[1] - 8:, :8] = min(255, 10 * i)   # index code in the bottom-left corner
        out.append(a)
    return out


def write_clip(root: Path, rel: str, n: int, as_video: bool, box=BOX) -> None:
    """``rel`` like ``train/Anger/0001.avi``: a video file, or the frame folder without
    the extension (frames ``00001.jpg``...)."""
    frames = frames_with_box(n, box)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_video:
        write_video(path, frames)
    else:
        folder = path.with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        for j, f in enumerate(frames, 1):
            Image.fromarray(f).save(folder / f"{j:05d}.png")


def write_caer(root: Path, clips, boxes: dict | None, train_list: str | None = None) -> Path:
    """A CAER tree: ``clips`` = [(rel, n_frames, label, as_video)]; the train list and a
    face box file (when ``boxes`` is given) under caer_video_annotations/."""
    ann = root / "caer_video_annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for rel, n, _label, as_video in clips:
        write_clip(root, rel, n, as_video)
    text = train_list if train_list is not None else "".join(
        f"{rel} {n} {label}\n" for rel, n, label, _ in clips)
    (ann / "train.txt").write_text(text)
    if boxes is not None:
        (ann / "caer_video_faces.json").write_text(json.dumps(boxes))
    return root


def mean_colour(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), float).reshape(-1, 3).mean(0)
