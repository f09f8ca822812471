"""Generated class-incremental demo set (``clapkit data make-demo --kind incremental``).

20 classes of textured shapes (``"striped circle"``, ...) in the CIFAR-100 python-pickle
layout (``cifar-100-python/{train,test,meta}``), read by the ``cifar100`` dataset plugin.
"""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clapkit.data.demo import DemoMaker


SHAPES = ("circle", "square", "triangle", "star", "cross")
FILLS = ("solid", "striped", "dotted", "checkered")
INCREMENTAL_CLASSES = tuple(f"{f} {s}" for s in SHAPES for f in FILLS)
IMG = 32


def _shape_mask(rng: random.Random, shape: str) -> np.ndarray:
    """``shape`` at a random size, place and small rotation."""
    r = rng.uniform(9, 14)
    cx, cy = rng.uniform(r, IMG - r), rng.uniform(r, IMG - r)
    return shape_mask(shape, cx, cy, r, rng.uniform(-0.3, 0.3))


def shape_mask(shape: str, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Boolean ``[IMG, IMG]`` mask of one shape centred at ``(cx, cy)`` with radius ``r``."""
    m = Image.new("L", (IMG, IMG), 0)
    d = ImageDraw.Draw(m)

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
    elif shape == "cross":
        t = r * 0.38
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=255)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
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


def _make(out: Path, seed: int, tiny: bool) -> None:
    """The registered generator: 40/10 images per class, or 3/1 when ``tiny``."""
    sizes = dict(train_per_class=3, test_per_class=1) if tiny else {}
    make_incremental_demo(out, seed, **sizes)


INCREMENTAL_DEMO = DemoMaker(kind="incremental", make=_make, version=1, dataset="cifar100")
