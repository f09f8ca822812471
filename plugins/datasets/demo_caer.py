"""Generated CAER-layout demo set (``clapkit data make-demo --kind caer``; no download).

Each clip shows a procedurally drawn face whose *expression* encodes one of the 7 CAER
emotions (brows, eyes, mouth shape; skin, hair, clothes and background are random and carry
no class), at a random place and size on a random "room" background, drifting a little from
frame to frame while the expression sets in. Class counts are imbalanced like the real set.
``train/`` and ``test/`` hold ``.avi`` files (MJPEG, decoded through PyAV), ``validation/``
frame folders;
lists in ``caer_video_annotations/`` and one face box per clip in
``caer_video_annotations/caer_video_faces.json`` keyed ``CAER/<split>/<Class>/<id>`` as the
commonly shared file is. Publishing (marker, atomic rename) is the core's
:func:`clapkit.data.demo.publish_demo`.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clapkit.data.demo import DemoMaker
from clapkit.data.video import write_video

CAER_CLASSES = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
CAER_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
FRAME_W, FRAME_H = 96, 72

# Expression parameters per class, in units of the face radius r:
# brow tilt (+ = inner ends lower, frowning), brow raise, eye radius, mouth curve
# (+ = corners up), mouth opening, mouth asymmetry, mouth half-width.
_EXPR = {
    "Anger":    dict(tilt=0.22, raise_=0.00, eye=0.06, curve=-0.08, open_=0.00, asym=0.00, w=0.30),
    "Disgust":  dict(tilt=0.08, raise_=0.04, eye=0.07, curve=-0.06, open_=0.00, asym=0.15, w=0.28),
    "Fear":     dict(tilt=-0.18, raise_=0.12, eye=0.14, curve=-0.04, open_=0.10, asym=0.00, w=0.30),
    "Happy":    dict(tilt=0.00, raise_=0.02, eye=0.08, curve=0.26, open_=0.00, asym=0.00, w=0.36),
    "Neutral":  dict(tilt=0.00, raise_=0.00, eye=0.09, curve=0.00, open_=0.00, asym=0.00, w=0.28),
    "Sad":      dict(tilt=-0.20, raise_=0.00, eye=0.08, curve=-0.24, open_=0.00, asym=0.00, w=0.30),
    "Surprise": dict(tilt=0.00, raise_=0.22, eye=0.15, curve=0.00, open_=0.30, asym=0.00, w=0.18),
}
_SKIN = [(241, 205, 178), (224, 172, 135), (198, 134, 96), (141, 85, 52), (255, 219, 190)]


# --- CAER-layout video demo ---------------------------------------------------------------

def _background(rng: random.Random) -> np.ndarray:
    """A random room: vertical gradient, a few 'furniture' blocks, a window or a poster."""
    top = np.array([rng.randrange(40, 230) for _ in range(3)], float)
    bot = np.array([rng.randrange(20, 200) for _ in range(3)], float)
    t = np.linspace(0, 1, FRAME_H)[:, None, None]
    bg = (top * (1 - t) + bot * t) * np.ones((1, FRAME_W, 1))
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randrange(2, 5)):
        x, y = rng.randrange(-10, FRAME_W), rng.randrange(-10, FRAME_H)
        w, h = rng.randrange(8, 40), rng.randrange(8, 30)
        d.rectangle([x, y, x + w, y + h], fill=tuple(rng.randrange(0, 256) for _ in range(3)))
    return np.asarray(img).copy()


def _draw_face(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, cls: str, k: float,
               look: dict) -> None:
    """One face; ``k`` in [0, 1] is how far the expression has set in."""
    e = _EXPR[cls]
    rx = 0.82 * r
    body = look["shirt"]
    d.rounded_rectangle([cx - 1.5 * r, cy + 0.9 * r, cx + 1.5 * r, cy + 3.5 * r], radius=r * 0.5,
                        fill=body)
    d.ellipse([cx - rx - 1, cy - r - 2, cx + rx + 1, cy + 0.2 * r], fill=look["hair"])
    d.ellipse([cx - rx, cy - r, cx + rx, cy + r], fill=look["skin"])
    ink = look["ink"]
    lw = max(1, round(r / 9))
    eye_y, eye_dx = cy - 0.12 * r, 0.36 * r
    eye_r = max(1.0, r * (0.09 + k * (e["eye"] - 0.09)))
    for s in (-1, 1):
        ex = cx + s * eye_dx
        d.ellipse([ex - eye_r * 1.3, eye_y - eye_r, ex + eye_r * 1.3, eye_y + eye_r],
                  fill=(250, 250, 250), outline=ink)
        pr = max(1.0, 0.6 * min(eye_r, 0.09 * r))
        d.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=ink)
        by = eye_y - 0.26 * r - k * e["raise_"] * r
        # Disgust raises one brow only: asymmetry is part of its expression.
        by -= k * (0.10 * r if (cls == "Disgust" and s == 1) else 0.0)
        outer, inner = ex + s * 0.2 * r, ex - s * 0.2 * r
        d.line([(outer, by), (inner, by + k * e["tilt"] * r)], fill=ink, width=lw + 1)
    my, hw = cy + 0.48 * r, r * (0.28 + min(k, 1.0) * (e["w"] - 0.28))
    curve, asym, open_ = k * e["curve"] * r, k * e["asym"] * r, k * e["open_"] * r
    if open_ >= 1.0:
        d.ellipse([cx - hw, my - open_ / 2 - curve / 2, cx + hw, my + open_ / 2 - curve / 2],
                  fill=(90, 20, 30), outline=ink, width=lw)
    else:
        # y(u) = my + curve (1/2 - u^2) - asym u: corners above the centre when curve > 0
        pts = [(cx + u * hw, my + curve * (0.5 - u * u) - asym * u)
               for u in (-1 + i / 4 for i in range(9))]
        d.line(pts, fill=ink, width=lw + 1, joint="curve")
    if cls == "Disgust" and k > 0.3:  # nose wrinkle
        d.line([(cx - 0.12 * r, cy + 0.18 * r), (cx + 0.12 * r, cy + 0.12 * r)], fill=ink,
               width=1)


def _clip(rng: random.Random, cls: str) -> tuple[list[np.ndarray], list[int]]:
    """Frames of one clip and the face box covering the face over the whole clip."""
    n = rng.randrange(8, 17)
    bg = _background(rng)
    r = rng.uniform(13, 21)
    cx = rng.uniform(r + 2, FRAME_W - r - 2)
    cy = rng.uniform(r + 2, FRAME_H - r - 2)
    vx, vy = rng.uniform(-0.6, 0.6), rng.uniform(-0.4, 0.4)
    look = {"skin": rng.choice(_SKIN),
            "hair": tuple(rng.randrange(0, 120) for _ in range(3)),
            "shirt": tuple(rng.randrange(0, 256) for _ in range(3)),
            "ink": tuple(rng.randrange(10, 60) for _ in range(3))}
    onset, peak = rng.uniform(0.0, 0.4), rng.uniform(0.85, 1.1)
    frames, x1s, y1s, x2s, y2s = [], [], [], [], []
    for f in range(n):
        fx = min(max(cx + vx * f + rng.uniform(-0.5, 0.5), r), FRAME_W - r)
        fy = min(max(cy + vy * f + rng.uniform(-0.5, 0.5), r), FRAME_H - r)
        k = peak * min(1.0, 0.45 + max(0.0, f / max(n - 1, 1) - onset) * 1.6)
        img = Image.fromarray(bg)
        _draw_face(ImageDraw.Draw(img), fx, fy, r, cls, k, look)
        frames.append(np.asarray(img))
        x1s.append(fx - 0.82 * r)
        x2s.append(fx + 0.82 * r)
        y1s.append(fy - r)
        y2s.append(fy + r)
    box = [max(0, math.floor(min(x1s))), max(0, math.floor(min(y1s))),
           min(FRAME_W, math.ceil(max(x2s))), min(FRAME_H, math.ceil(max(y2s)))]
    return frames, box


def make_caer_demo(out: Path, seed: int = 0, train_per_class: tuple[int, int] = (20, 40),
                   valid_per_class: tuple[int, int] = (8, 10),
                   test_per_class: tuple[int, int] | None = (8, 10)) -> Path:
    """Write the CAER-layout demo set into ``out`` (which must not hold another set); no
    test split when ``test_per_class`` is None. The test clips are drawn after train and
    valid, so those are the same with or without it."""
    rng = random.Random(f"caer-demo-{seed}")
    ann = out / "caer_video_annotations"
    ann.mkdir(parents=True, exist_ok=True)
    boxes: dict[str, list[int]] = {}
    sizes = {"train": train_per_class, "valid": valid_per_class, "test": test_per_class}
    for split, folder in CAER_SPLITS.items():
        if sizes[split] is None:
            continue
        lo, hi = sizes[split]  # type: ignore[misc]
        lines = []
        for label, cls in enumerate(CAER_CLASSES):
            (out / folder / cls).mkdir(parents=True, exist_ok=True)
            for i in range(1, rng.randrange(lo, hi + 1) + 1):
                frames, box = _clip(rng, cls)
                rel = f"{folder}/{cls}/{i:04d}"
                if split != "valid":        # train and test: videos; valid: frames
                    write_video(out / f"{rel}.avi", frames)
                else:
                    (out / rel).mkdir()
                    for j, fr in enumerate(frames, 1):
                        Image.fromarray(fr).save(out / rel / f"{j:05d}.jpg", quality=95)
                lines.append(f"{rel}.avi {len(frames)} {label}")
                boxes[f"CAER/{rel}"] = box
        (ann / f"{folder}.txt").write_text("\n".join(lines) + "\n")
    (ann / "caer_video_faces.json").write_text(json.dumps(boxes, sort_keys=True))
    return out


def _make(out: Path, seed: int, tiny: bool) -> None:
    """The registered generator: full size, or one or two clips per class when ``tiny``."""
    sizes = dict(train_per_class=(1, 2), valid_per_class=(1, 1), test_per_class=None) \
        if tiny else {}
    make_caer_demo(out, seed, **sizes)  # type: ignore[arg-type]


#: bump when the generated data changes, so existing demo folders are regenerated
CAER_DEMO = DemoMaker(kind="caer", make=_make, version=2, dataset="caer")
