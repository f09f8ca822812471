"""Generated caption demo set (``clapkit data make-demo --kind captions``).

Images of the 20-class demo's textured shapes (``"striped circle"``, ... -- the classes of
``clapkit data make-demo --kind incremental``, 32x32) whose **colour**, **size**,
**position**, **texture** and **shape** vary, each with five templated captions that
describe them, in the COCO Karpathy layout read by the ``coco_karpathy`` dataset::

    <root>/dataset_coco.json
    <root>/{train,val,test}/<n>.png

Nine in ten training images are drawn as the 20-class demo draws its own (any colour pair,
any size and place; ``style = "free"``, captions without colour or position): a CLIP trained
here has then seen the look of the images it is later classified on, as web-scale pre-training
has seen photos. Their captions name texture, shape and size only: captions that name the
colour let a contrastive model tell the images of a batch apart by colour alone, and it then
learns shapes slowly (measured with the ITC demo, same steps: half the training images named,
zero-shot shape accuracy 38 %; all free, 61 %). The other tenth and every validation and test
image are ``"named"``: their captions name colour, size, position, texture and shape, so a
caption model can be scored on every attribute. The named training images are Karpathy split
``train``, the free ones ``restval`` (COCO's "extra training images"): ``coco_karpathy``'s
default clapkit train split takes both, and a recipe can name the named ones alone
(``data.splits = {named = ["train"], ...}`` and a stage's ``split = "named"``). Measured:
the caption decoder trained on the named ones alone (frozen encoders of
``recipes/demo_pretrain.toml``) still names no colour -- the encoders ITC trained here hold
little of it (a linear probe reads the colour of 55 % of named images from ``z``, chance
12.5 %) -- and its captions score lower than one trained on all images.

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
#: size word -> radius range in pixels (of a 32 px image): the 20-class demo's 9-14 range,
#: split in the middle
SIZES = {"small": (9.0, 11.5), "large": (11.5, 14.0)}
#: position word -> centre of a small shape (fractions of the image side)
POSITIONS = {"top left": (0.32, 0.32), "top right": (0.68, 0.32),
             "bottom left": (0.32, 0.68), "bottom right": (0.68, 0.68), "centre": (0.5, 0.5)}
PATTERN_NOUN = {"solid": "plain", "striped": "stripes", "dotted": "dots",
                "checkered": "a checkerboard pattern"}
TEMPLATES = (
    "a {size} {colour} {fill} {shape} in the {where}",
    "a photo of a {colour} {fill} {shape}",
    "a {colour} {shape} covered in {pattern}",
    "there is a {size} {colour} {fill} {shape} in the {where} of the picture",
    "{colour} {fill} {shape}, {size}",
)
#: captions of a "free" image: its colour pair and place have no names
FREE_TEMPLATES = (
    "a photo of a {fill} {shape}",
    "a {size} {fill} {shape}",
    "a {shape} covered in {pattern}",
    "a picture of a {size} {shape} with {pattern}",
    "{fill} {shape}",
)
SPLITS = ("train", "val", "test")
#: share of "free" images per split (see the module docstring)
FREE_FRACTION = {"train": 0.9, "val": 0.0, "test": 0.0}


def _background(rng: random.Random, fg: tuple[int, int, int]) -> np.ndarray:
    while True:                       # a random colour clearly apart from the shape's
        bg = np.array([rng.randrange(0, 256) for _ in range(3)])
        if np.abs(bg - np.array(fg)).sum() > 220:
            return bg


def _paint(rng: random.Random, cls: str, fg: np.ndarray, bg: np.ndarray, cx: float,
           cy: float, r: float) -> np.ndarray:
    """The 20-class demo's look: the fill pattern in ``fg`` inside the shape, the shape's
    unpainted pixels a 3:1 blend of background and foreground, Gaussian noise (sd 8)."""
    fill, shape = cls.split(" ")
    mask = shape_mask(shape, cx, cy, r, rng.uniform(-0.3, 0.3))
    paint = mask & _pattern(fill, rng.randrange(0, 6))
    img = np.where(paint[..., None], fg, bg).astype(float)
    img[mask & ~paint] = 0.75 * bg + 0.25 * fg
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0.0, 8.0, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def draw_free_item(rng: random.Random, cls: str) -> tuple[np.ndarray, dict[str, str]]:
    """One image of class ``cls`` drawn as the 20-class demo draws (a random background, a
    foreground 90-160 levels away per channel, radius 9-14 px anywhere in the image)."""
    fill, shape = cls.split(" ")
    bg = np.array([rng.randrange(0, 256) for _ in range(3)])
    fg = (bg + np.array([rng.choice((-1, 1)) * rng.randrange(90, 160) for _ in range(3)])) % 256
    r = rng.uniform(SIZES["small"][0], SIZES["large"][1])
    cx, cy = rng.uniform(r, IMG - r), rng.uniform(r, IMG - r)
    attrs = {"style": "free", "size": "small" if r < SIZES["large"][0] else "large",
             "fill": fill, "shape": shape}
    return _paint(rng, cls, fg, bg, cx, cy, r), attrs


def draw_item(rng: random.Random, cls: str) -> tuple[np.ndarray, dict[str, str]]:
    """One image of class ``cls`` (``"<fill> <shape>"``) in a named colour on a background
    far from it, of a named size, a small one at a named position, and the attributes its
    captions name."""
    fill, shape = cls.split(" ")
    colour = rng.choice(list(COLOURS))
    size = rng.choice(list(SIZES))
    r = rng.uniform(*SIZES[size])
    where = rng.choice(list(POSITIONS)) if size == "small" else "centre"
    fx, fy = POSITIONS[where]
    cx = min(max(fx * IMG + rng.uniform(-1.5, 1.5), r), IMG - r)
    cy = min(max(fy * IMG + rng.uniform(-1.5, 1.5), r), IMG - r)
    fg = np.array(COLOURS[colour])
    img = _paint(rng, cls, fg, _background(rng, COLOURS[colour]), cx, cy, r)
    attrs = {"style": "named", "colour": colour, "size": size, "position": where, "fill": fill,
             "shape": shape}
    return img, attrs


def captions_for(attrs: dict[str, str]) -> list[str]:
    """The five templated captions of an image's attributes (of either style)."""
    words = {**attrs, "where": attrs.get("position", ""), "pattern": PATTERN_NOUN[attrs["fill"]]}
    templates = FREE_TEMPLATES if attrs.get("style") == "free" else TEMPLATES
    return [t.format(**words) for t in templates]


def make_caption_demo(out: Path, seed: int = 0, per_class: dict[str, int] | None = None
                      ) -> Path:
    """Write the caption set into ``out`` (``per_class``: images per class and split)."""
    per_class = per_class or {"train": 400, "val": 5, "test": 10}
    rng = random.Random(f"caption-demo-{seed}")
    images, sent_id = [], 0
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        per = per_class[split]
        # of each class; at least one named image per class wherever there are two (the
        # tiny set too: a named-only training split is never empty)
        free = min(round(FREE_FRACTION[split] * per), max(per - 1, 0) if per > 1 else per)
        order = [(c, k < free) for c in INCREMENTAL_CLASSES for k in range(per)]
        rng.shuffle(order)
        for n, (cls, is_free) in enumerate(order):
            img, attrs = (draw_free_item if is_free else draw_item)(rng, cls)
            name = f"{n:05d}.png"
            Image.fromarray(img).save(out / split / name)
            imgid = len(images)
            sents = [{"raw": c, "tokens": c.replace(",", "").split(), "imgid": imgid,
                      "sentid": sent_id + k} for k, c in enumerate(captions_for(attrs))]
            images.append({"filepath": split, "filename": name, "imgid": imgid,
                           "split": "restval" if is_free else split, "sentences": sents,
                           "sentids": [s["sentid"] for s in sents], "label": cls,
                           "attributes": attrs})
            sent_id += len(sents)
    doc = {"dataset": "clapkit-shapes", "classes": list(INCREMENTAL_CLASSES),
           "fills": list(FILLS), "images": images}
    (out / "dataset_coco.json").write_text(json.dumps(doc))
    return out


def _make(out: Path, seed: int, tiny: bool) -> None:
    """The registered generator: 400/5/10 images per class, 2/1/1 when ``tiny``."""
    make_caption_demo(out, seed, {"train": 2, "val": 1, "test": 1} if tiny else None)


CAPTION_DEMO = DemoMaker(kind="captions", make=_make, version=3, dataset="coco_karpathy")
