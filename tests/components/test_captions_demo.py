"""The generated caption demo: captions say what the image shows (colour, position, size,
texture, shape), deterministic per seed, published in the Karpathy layout."""

from __future__ import annotations

import json
import random

import numpy as np
from PIL import Image

from clapkit_plugins.datasets.demo_captions import (COLOURS, POSITIONS, captions_for,
                                                    draw_item, make_caption_demo)
from clapkit_plugins.datasets.demo_incremental import INCREMENTAL_CLASSES


def _painted(img: np.ndarray, colour: str) -> np.ndarray:
    return np.abs(img.astype(int) - np.array(COLOURS[colour])).sum(-1) < 60


def test_images_show_the_colour_size_and_position_their_captions_name():
    rng = random.Random(0)
    sizes = {"small": [], "large": []}
    for n in range(200):
        cls = INCREMENTAL_CLASSES[n % 20]
        img, a = draw_item(rng, cls)
        assert f"{a['fill']} {a['shape']}" == cls
        paint = _painted(img, a["colour"])
        assert paint.sum() >= 8, (cls, a)          # the named colour is on the image
        ys, xs = np.nonzero(paint)
        if a["size"] == "small":
            fx, fy = POSITIONS[a["position"]]
            assert abs(xs.mean() / 32 - fx) < 0.15 and abs(ys.mean() / 32 - fy) < 0.15, a
        sizes[a["size"]].append(np.ptp(xs) + np.ptp(ys))
        caps = captions_for(a)
        assert len(caps) == 5 and all(a["shape"] in c for c in caps)
        assert any(a["colour"] in c for c in caps) and any(a["position"] in c for c in caps)
    assert np.mean(sizes["large"]) > np.mean(sizes["small"]) + 5


def test_the_set_is_deterministic_per_seed_and_in_the_karpathy_layout(tmp_path):
    per = {"train": 2, "val": 1, "test": 1}
    a = make_caption_demo(tmp_path / "a", 0, per)
    b = make_caption_demo(tmp_path / "b", 0, per)
    c = make_caption_demo(tmp_path / "c", 1, per)
    doc = json.loads((a / "dataset_coco.json").read_text())
    assert (a / "dataset_coco.json").read_text() == (b / "dataset_coco.json").read_text()
    assert (a / "dataset_coco.json").read_text() != (c / "dataset_coco.json").read_text()
    assert doc["classes"] == list(INCREMENTAL_CLASSES) and len(doc["images"]) == 80
    e = doc["images"][0]
    assert set(e) >= {"filepath", "filename", "imgid", "split", "sentences", "sentids"}
    assert [s["imgid"] for s in e["sentences"]] == [e["imgid"]] * 5
    # free training images are Karpathy "restval", named ones "train" (one of each per
    # class here: a named-only training split is never empty)
    assert {x["split"] for x in doc["images"]} == {"train", "restval", "val", "test"}
    for part, style in (("train", "named"), ("restval", "free")):
        got = [x for x in doc["images"] if x["split"] == part]
        assert len(got) == 20 and all(x["attributes"]["style"] == style for x in got)
        assert all(x["filepath"] == "train" for x in got)
    assert len({x["imgid"] for x in doc["images"]}) == 80
    with Image.open(a / e["filepath"] / e["filename"]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert (np.asarray(Image.open(a / e["filepath"] / e["filename"]))
            == np.asarray(Image.open(b / e["filepath"] / e["filename"]))).all()
