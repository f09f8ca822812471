"""Generated demo datasets in the real on-disk layouts (no downloads, seconds to make).

* ``caer``: a CAER-layout video set. Each clip shows a procedurally drawn face whose
  *expression* encodes one of the 7 CAER emotions (brows, eyes, mouth shape; skin, hair,
  clothes and background are random and carry no class), at a random place and size on a
  random "room" background, drifting a little from frame to frame while the expression sets
  in. Class counts are imbalanced like the real set. ``train/`` holds ``.avi`` files (MJPEG,
  decoded through PyAV), ``validation/`` frame folders; lists in ``caer_video_annotations/``
  and one face box per clip in ``caer_video_annotations/caer_video_faces.json`` keyed
  ``CAER/<split>/<Class>/<id>`` as the commonly shared file is.
* ``incremental``: 20 classes of textured shapes (``"striped circle"``, ...) in the CIFAR-100
  python-pickle layout (``cifar-100-python/{train,test,meta}``), for class-incremental runs.

Generation is seeded and deterministic; :func:`ensure_demo` regenerates only when the marker
file (generator kind, version, seed) is absent or different, and publishes by renaming a
finished temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ClapkitError
from .layout import resolve_path
from .video import write_video

DEMO_VERSION = 1
MARKER = ".clapkit_demo.json"
KINDS = ("caer", "incremental")

CAER_CLASSES = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
CAER_SPLITS = {"train": "train", "valid": "validation"}
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
                   valid_per_class: tuple[int, int] = (8, 10)) -> Path:
    """Write the CAER-layout demo set into ``out`` (which must not hold another set)."""
    rng = random.Random(f"caer-demo-{seed}")
    ann = out / "caer_video_annotations"
    ann.mkdir(parents=True, exist_ok=True)
    boxes: dict[str, list[int]] = {}
    for split, folder in CAER_SPLITS.items():
        lo, hi = train_per_class if split == "train" else valid_per_class
        lines = []
        for label, cls in enumerate(CAER_CLASSES):
            (out / folder / cls).mkdir(parents=True, exist_ok=True)
            for i in range(1, rng.randrange(lo, hi + 1) + 1):
                frames, box = _clip(rng, cls)
                rel = f"{folder}/{cls}/{i:04d}"
                if split == "train":
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


# --- class-incremental image demo ----------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "cross")
FILLS = ("solid", "striped", "dotted", "checkered")
INCREMENTAL_CLASSES = tuple(f"{f} {s}" for s in SHAPES for f in FILLS)
IMG = 32


def _shape_mask(rng: random.Random, shape: str) -> np.ndarray:
    m = Image.new("L", (IMG, IMG), 0)
    d = ImageDraw.Draw(m)
    r = rng.uniform(9, 14)
    cx, cy = rng.uniform(r, IMG - r), rng.uniform(r, IMG - r)
    rot = rng.uniform(-0.3, 0.3)

    def poly(k: int, radii: list[float], turn: float = 0.0) -> list[tuple[float, float]]:
        a = [rot + turn + 2 * math.pi * i / k for i in range(k)]
        return [(cx + radii[i % len(radii)] * math.sin(a[i]),
                 cy - radii[i % len(radii)] * math.cos(a[i])) for i in range(k)]

    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        d.polygon(poly(4, [r * 1.2], math.pi / 4), fill=255)
    elif shape == "triangle":
        d.polygon(poly(3, [r * 1.15]), fill=255)
    elif shape == "star":
        d.polygon(poly(10, [r * 1.15, r * 0.45]), fill=255)
    else:  # cross
        t = r * 0.38
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=255)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=255)
    return np.asarray(m) > 127


def _pattern(fill: str, phase: int) -> np.ndarray:
    y, x = np.mgrid[0:IMG, 0:IMG]
    if fill == "striped":
        return ((x + y + phase) // 3) % 2 == 0
    if fill == "dotted":
        return ((x + phase) % 5 < 2) & ((y + phase) % 5 < 2)
    if fill == "checkered":
        return (((x + phase) // 4) + ((y + phase) // 4)) % 2 == 0
    return np.ones((IMG, IMG), bool)


def _shape_image(rng: random.Random, cls: str) -> np.ndarray:
    fill, shape = cls.split(" ")
    bg = np.array([rng.randrange(0, 256) for _ in range(3)], np.int16)
    fg = (bg + np.array([rng.choice((-1, 1)) * rng.randrange(90, 160) for _ in range(3)])) % 256
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 8.0, (IMG, IMG, 3))
    mask = _shape_mask(rng, shape)
    paint = mask & _pattern(fill, rng.randrange(0, 6))
    outline = mask & ~paint
    img = np.where(paint[..., None], fg, bg).astype(float)
    img[outline] = 0.75 * bg + 0.25 * fg
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_incremental_demo(out: Path, seed: int = 0, train_per_class: int = 40,
                          test_per_class: int = 10) -> Path:
    """Write the 20-class shape set in the CIFAR-100 python-pickle layout into ``out``."""
    rng = random.Random(f"incremental-demo-{seed}")
    folder = out / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        rows, labels, names = [], [], []
        for label, cls in enumerate(INCREMENTAL_CLASSES):
            for i in range(per):
                img = _shape_image(rng, cls)
                rows.append(img.transpose(2, 0, 1).reshape(-1))  # CIFAR rows: R, G, B planes
                labels.append(label)
                names.append(f"{cls.replace(' ', '_')}_{i:04d}.png".encode())
        order = list(range(len(rows)))
        rng.shuffle(order)
        batch = {b"batch_label": f"{split} batch".encode(),
                 b"filenames": [names[i] for i in order],
                 b"fine_labels": [labels[i] for i in order],
                 b"coarse_labels": [labels[i] // 4 for i in order],
                 b"data": np.stack([rows[i] for i in order]).astype(np.uint8)}
        with open(folder / split, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    meta = {b"fine_label_names": [c.encode() for c in INCREMENTAL_CLASSES],
            b"coarse_label_names": [s.encode() for s in SHAPES]}
    with open(folder / "meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return out


_MAKERS = {"caer": make_caer_demo, "incremental": make_incremental_demo}


#: sizes of the ``tiny`` variants (contract suites, unit tests): one or two items per class
_TINY = {"caer": dict(train_per_class=(1, 2), valid_per_class=(1, 1)),
         "incremental": dict(train_per_class=3, test_per_class=1)}


def ensure_demo(kind: str, root: str | Path, seed: int = 0, force: bool = False,
                tiny: bool = False) -> Path:
    """The demo set ``kind`` at ``root`` (relative to the working directory), generated
    when missing or made by another generator version / seed. Idempotent and safe to call
    from several processes: each builds in its own temporary folder; the first rename wins.
    ``tiny`` makes a few items per class (for tests)."""
    if kind not in _MAKERS:
        raise ClapkitError(f"unknown demo kind '{kind}' (known: {', '.join(KINDS)})")
    root = resolve_path(root)
    want = {"kind": kind, "version": DEMO_VERSION, "seed": seed, "tiny": tiny}
    if not force and _marker(root) == want:
        return root
    if root.exists() and _marker(root) is None and any(root.iterdir()):
        raise ClapkitError(f"{root} exists and is not a generated demo folder (no {MARKER}); "
                           f"refusing to overwrite it, choose another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _MAKERS[kind](tmp, seed, **(_TINY[kind] if tiny else {}))
        (tmp / MARKER).write_text(json.dumps(want, sort_keys=True))
        if not force and _marker(root) == want:  # another process published meanwhile
            return root
        if root.exists():
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if _marker(root) != want:  # someone else published something else
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
