"""Generated caption demo set (``clapkit data make-demo --kind captions``).

Images of the 20-class demo's textured shapes (``"striped circle"``, ... -- the classes of
``clapkit data make-demo --kind incremental``, same 32x32 style) whose **colour**, **size**,
**position**, **texture** and **shape** vary, each with five templated captions that
describe them, in the COCO Karpathy layout read by the ``coco_karpathy`` dataset::

    <root>/dataset_coco.json
    <root>/{train,val,test}/<n>.png

Every image entry carries the Karpathy keys (``filepath``, ``filename``, ``imgid``,
``split``, ``sentences[].raw``/``tokens``, ``sentids``) plus ``label`` (its class name, so
classification and retrieval are measured on the same images) and ``attributes`` (what the
captions name); the file's top-level ``classes`` lists the 20 classes in the demo's order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from clapkit.data.demo import DemoMaker

from .demo_incremental import FILLS, IMG, INCREMENTAL_CLASSES, _pattern, shape_mask

#: named foreground colours (RGB) the captions use
COLOURS = {"red": (220, 30, 30), "green": (40, 170, 50), "blue": (40, 70, 220),
           "yellow": (235, 215, 40), "purple": (140, 50, 180), "orange": (245, 140, 20),
           "white": (245, 245, 245), "black": (15, 15, 15)}
#: size word -> radius range in pixels (of a 32 px image)
SIZES = {"small": (7.0, 9.0), "large": (11.5, 13.5)}
#: position word -> centre of a small shape (fractions of the image side)
POSITIONS = {"top left": (0.32, 0.32), "top right": (0.68, 0.32),
             "bottom left": (0.32, 0.68), "bottom right": (0.68, 0.68), "centre": (0.5, 0.5)}
PATTERN_NOUN = {"solid": "plain", "striped": "stripes", "dotted": "dots",
                "checkered": "a checkerboard pattern"}
TEMPLATES = (
    "a {size} {colour} {fill} {shape} in the {where}",
    "a photo of a {fill} {shape}",
    "a {colour} {shape} covered in {pattern}",
    "there is a {size} {fill} {shape} in the {where} of the picture",
    "{colour} {fill} {shape}, {size}",
)
SPLITS = ("train", "val", "test")


def _background(rng: random.Random, fg: tuple[int, int, int]) -> np.ndarray:
    while True:                       # a random colour clearly apart from the shape's
        bg = np.array([rng.randrange(0, 256) for _ in range(3)])
        if np.abs(bg - np.array(fg)).sum() > 220:
            return bg


def draw_item(rng: random.Random, cls: str) -> tuple[np.ndarray, dict[str, str]]:
    """One image of class ``cls`` (``"<fill> <shape>"``) with random colour, size and
    position, and the attributes its captions name."""
    fill, shape = cls.split(" ")
    colour = rng.choice(list(COLOURS))
    size = rng.choice(list(SIZES))
    r = rng.uniform(*SIZES[size])
    if size == "small":
        where = rng.choice(list(POSITIONS))
        fx, fy = POSITIONS[where]
        cx, cy = fx * IMG + rng.uniform(-1.5, 1.5), fy * IMG + rng.uniform(-1.5, 1.5)
    else:
        where = "centre"
        cx, cy = IMG / 2 + rng.uniform(-1.5, 1.5), IMG / 2 + rng.uniform(-1.5, 1.5)
    fg = np.array(COLOURS[colour])
    bg = _background(rng, COLOURS[colour])
    mask = shape_mask(shape, cx, cy, r, rng.uniform(-0.3, 0.3))
    paint = mask & _pattern(fill, rng.randrange(0, 6))
    img = np.where(paint[..., None], fg, bg).astype(float)
    img[mask & ~paint] = 0.7 * bg + 0.3 * fg
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0.0, 6.0, img.shape)
    attrs = {"colour": colour, "size": size, "position": where, "fill": fill, "shape": shape}
    return np.clip(img + noise, 0, 255).astype(np.uint8), attrs


def captions_for(attrs: dict[str, str]) -> list[str]:
    """The five templated captions of an image's attributes."""
    words = {**attrs, "where": attrs["position"], "pattern": PATTERN_NOUN[attrs["fill"]]}
    return [t.format(**words) for t in TEMPLATES]


def make_caption_demo(out: Path, seed: int = 0, per_class: dict[str, int] | None = None
                      ) -> Path:
    """Write the caption set into ``out`` (``per_class``: images per class and split)."""
    per_class = per_class or {"train": 40, "val": 5, "test": 10}
    rng = random.Random(f"caption-demo-{seed}")
    images, sent_id = [], 0
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        order = [c for c in INCREMENTAL_CLASSES for _ in range(per_class[split])]
        rng.shuffle(order)
        for n, cls in enumerate(order):
            img, attrs = draw_item(rng, cls)
            name = f"{n:05d}.png"
            Image.fromarray(img).save(out / split / name)
            imgid = len(images)
            sents = [{"raw": c, "tokens": c.replace(",", "").split(), "imgid": imgid,
                      "sentid": sent_id + k} for k, c in enumerate(captions_for(attrs))]
            images.append({"filepath": split, "filename": name, "imgid": imgid,
                           "split": split, "sentences": sents,
                           "sentids": [s["sentid"] for s in sents], "label": cls,
                           "attributes": attrs})
            sent_id += len(sents)
    doc = {"dataset": "clapkit-shapes", "classes": list(INCREMENTAL_CLASSES),
           "fills": list(FILLS), "images": images}
    (out / "dataset_coco.json").write_text(json.dumps(doc))
    return out


def _make(out: Path, seed: int, tiny: bool) -> None:
    """The registered generator: 40/5/10 images per class, 2/1/1 when ``tiny``."""
    make_caption_demo(out, seed, {"train": 2, "val": 1, "test": 1} if tiny else None)


CAPTION_DEMO = DemoMaker(kind="captions", make=_make, version=1, dataset="coco_karpathy")
