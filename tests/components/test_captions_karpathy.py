"""Karpathy split files (COCO / Flickr30k layouts): items carry every caption and the image
id, splits map to Karpathy's, labels optional, clear errors."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from clapkit.config import structure
from clapkit.data.base import ClipDataset
from clapkit.errors import ClapkitError, RecipeError
from clapkit_plugins.datasets._caption_source import UNLABELLED
from clapkit_plugins.datasets.captions_karpathy import (CocoKarpathyConfig,
                                                        Flickr30kKarpathyConfig, build_coco,
                                                        build_flickr30k)
from clapkit_plugins.datasets.demo_captions import CAPTION_DEMO



def _entry(imgid, split, filename, caps, filepath=None, **extra):
    e = {"imgid": imgid, "split": split, "filename": filename,
         "sentences": [{"raw": c, "tokens": c.split(), "imgid": imgid, "sentid": 10 * imgid + k}
                       for k, c in enumerate(caps)], "sentids": [], **extra}
    if filepath is not None:
        e["filepath"] = filepath
    return e


@pytest.fixture
def coco(tmp_path):
    """A tiny COCO tree: 2 train + 1 restval + 1 val + 1 test image, 2-3 captions each."""
    entries = [_entry(0, "train", "COCO_train2014_0.jpg", ["a dog", "a brown dog", "dog"],
                      "train2014"),
               _entry(1, "train", "COCO_train2014_1.jpg", ["a cat", "cat on a mat"], "train2014"),
               _entry(2, "restval", "COCO_val2014_2.jpg", ["a bird", "bird"], "val2014"),
               _entry(3, "val", "COCO_val2014_3.jpg", ["a car", "red car"], "val2014"),
               _entry(4, "test", "COCO_val2014_4.jpg", ["a boat", "boat"], "val2014")]
    for e in entries:
        (tmp_path / e["filepath"]).mkdir(exist_ok=True)
        Image.new("RGB", (20, 16), (e["imgid"] * 40, 0, 0)).save(
            tmp_path / e["filepath"] / e["filename"])
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries,
                                                            "dataset": "coco"}))
    return tmp_path


def _cfg(cls, **kw):
    return structure(cls, kw, file="r.toml", key="data")


def test_coco_items_carry_all_captions_and_the_image_id(coco):
    src = build_coco(_cfg(CocoKarpathyConfig, root=str(coco)), None)
    assert src.splits() == ["train", "valid", "test"]
    refs = src.refs("train")                     # train + restval (the 113k protocol)
    assert [r.id for r in refs] == ["train2014/COCO_train2014_0", "train2014/COCO_train2014_1",
                                    "val2014/COCO_val2014_2"]
    assert refs[0].texts == ("a dog", "a brown dog", "dog") and refs[0].group == "0"
    assert refs[2].path == str(coco / "val2014" / "COCO_val2014_2.jpg")
    assert src.classes == [UNLABELLED] and {r.label for r in refs} == {0}
    assert src.captions("test") == {"4": ["a boat", "boat"]}
    img = src.load(refs[1], False, random.Random(0))["image"][0]
    assert img.size == (20, 16) and img.getpixel((0, 0)) == (40, 0, 0)


def test_one_item_per_caption_keeps_the_image_id(coco):
    src = build_coco(_cfg(CocoKarpathyConfig, root=str(coco), items="caption"), None)
    refs = src.refs("train")
    assert len(refs) == 3 + 2 + 2
    assert [r.id for r in refs[:3]] == [f"train2014/COCO_train2014_0#{k}" for k in range(3)]
    assert [r.group for r in refs] == ["0"] * 3 + ["1"] * 2 + ["2"] * 2
    assert [r.texts for r in refs[3:5]] == [("a cat",), ("cat on a mat",)]
    assert len({r.id for r in refs}) == len(refs)


def test_splits_map_to_karpathy_splits(coco):
    src = build_coco(_cfg(CocoKarpathyConfig, root=str(coco),
                          splits={"train": ["train"], "test": ["val", "test"]}), None)
    assert [r.group for r in src.refs("train")] == ["0", "1"]
    assert [r.group for r in src.refs("test")] == ["3", "4"]
    with pytest.raises(ClapkitError, match="no split 'valid'"):
        src.refs("valid")


def test_unknown_karpathy_split_in_the_recipe_names_the_allowed_ones(coco):
    with pytest.raises(RecipeError, match="unknown Karpathy split 'dev'.*restval"):
        _cfg(CocoKarpathyConfig, root=str(coco), splits={"train": ["dev"]})


def test_labels_from_a_key_in_the_declared_order(coco):
    doc = json.loads((coco / "dataset_coco.json").read_text())
    for e, lab in zip(doc["images"], ["pet", "pet", "animal", "thing", "thing"]):
        e["label"] = lab
    doc["classes"] = ["thing", "pet", "animal"]
    (coco / "dataset_coco.json").write_text(json.dumps(doc))
    src = build_coco(_cfg(CocoKarpathyConfig, root=str(coco), label_key="label"), None)
    assert src.classes == ["thing", "pet", "animal"]
    assert [r.label for r in src.refs("train")] == [1, 1, 2]
    # the recipe's order wins; a label outside it is an error naming it
    with pytest.raises(ClapkitError, match=r"label value\(s\) \['thing'\] not among"):
        build_coco(_cfg(CocoKarpathyConfig, root=str(coco), label_key="label",
                        classes=["pet", "animal"]), None)


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("filename"), r"images\[0\]: no key 'filename' \(keys: "),
    (lambda e: e.update(split="dev"), r"images\[0\]: split 'dev'; allowed: train, restval"),
    (lambda e: e.update(sentences=[]), r"images\[0\]: 'sentences' must be a non-empty list"),
    (lambda e: e["sentences"][1].pop("raw"), r"images\[0\]\.sentences\[1\]: no caption text"),
])
def test_bad_entries_name_file_entry_and_key(coco, mutate, message):
    doc = json.loads((coco / "dataset_coco.json").read_text())
    mutate(doc["images"][0])
    (coco / "dataset_coco.json").write_text(json.dumps(doc))
    with pytest.raises(ClapkitError, match=message) as exc:
        build_coco(_cfg(CocoKarpathyConfig, root=str(coco)), None)
    assert "dataset_coco.json" in str(exc.value)


def test_missing_or_broken_split_file(coco, tmp_path):
    with pytest.raises(ClapkitError, match="no split file .*dataset_flickr30k.json"):
        build_flickr30k(_cfg(Flickr30kKarpathyConfig, root=str(coco)), None)
    (coco / "dataset_coco.json").write_text("{not json")
    with pytest.raises(ClapkitError, match="not valid JSON"):
        build_coco(_cfg(CocoKarpathyConfig, root=str(coco)), None)
    (coco / "dataset_coco.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ClapkitError, match="an 'images' list"):
        build_coco(_cfg(CocoKarpathyConfig, root=str(coco)), None)


def test_flickr30k_layout_has_no_filepath(tmp_path):
    (tmp_path / "flickr30k-images").mkdir()
    entries = [_entry(i, s, f"{1000 + i}.jpg", [f"caption {i} a", f"caption {i} b"])
               for i, s in enumerate(["train", "train", "val", "test"])]
    for e in entries:
        Image.new("RGB", (8, 8)).save(tmp_path / "flickr30k-images" / e["filename"])
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    src = build_flickr30k(_cfg(Flickr30kKarpathyConfig, root=str(tmp_path)), None)
    refs = src.refs("train")
    assert [r.id for r in refs] == ["1000", "1001"]
    assert refs[0].path == str(tmp_path / "flickr30k-images" / "1000.jpg")
    assert src.refs("valid")[0].texts == ("caption 2 a", "caption 2 b")


def test_the_generated_demo_reads_with_the_20_demo_classes(tmp_path):
    from clapkit_plugins.datasets.demo_incremental import INCREMENTAL_CLASSES

    root = CAPTION_DEMO.ensure(tmp_path / "captions", tiny=True)
    src = build_coco(_cfg(CocoKarpathyConfig, root=str(root), label_key="label"), None)
    assert src.classes == list(INCREMENTAL_CLASSES)
    assert src.splits() == ["train", "valid", "test"]
    refs = src.refs("train")
    assert len(refs) == 2 * 20 and src.class_counts("train") == [2] * 20
    for r in refs:                               # every caption names the class's words
        fill, shape = src.classes[r.label].split()
        assert len(r.texts) == 5 and all(shape in c for c in r.texts)
        assert sum(fill in c for c in r.texts) >= 3
    ds = ClipDataset(src, "test", lambda im: torch.zeros(3, *im.size), train=False)
    assert ds[0]["streams"]["image"].shape == (1, 3, 32, 32)
