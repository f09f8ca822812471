"""Image-caption tables (CSV / TSV / JSONL) with configurable columns: rows of one image are
its captions, ids and labels optional, errors name file, line and column."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clapkit.config import structure
from clapkit.errors import ClapkitError
from clapkit_plugins.datasets.captions_table import (CaptionTableConfig, build,
                                                     write_demo_tables)
from clapkit_plugins.datasets.demo_captions import CAPTION_DEMO


def _cfg(**kw):
    return structure(CaptionTableConfig, kw, file="r.toml", key="data")


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / "img" / n)
    return tmp_path


def test_open_clip_tsv_defaults_group_rows_by_image(images):
    (images / "train.tsv").write_text("filepath\ttitle\n"
                                      "img/a.jpg\ta red thing\nimg/b.jpg\ta blue thing\n"
                                      "img/a.jpg\tsomething red\n")
    src = build(_cfg(root=str(images), splits={"train": "train.tsv"}), None)
    refs = src.refs("train")
    assert [(r.id, r.texts, r.group) for r in refs] == [
        ("img/a", ("a red thing", "something red"), "img/a.jpg"),
        ("img/b", ("a blue thing",), "img/b.jpg")]
    assert refs[0].path == str(images / "img" / "a.jpg")
    per_caption = build(_cfg(root=str(images), splits={"train": "train.tsv"},
                             items="caption"), None).refs("train")
    assert [r.group for r in per_caption] == ["img/a.jpg", "img/a.jpg", "img/b.jpg"]


def test_csv_with_own_column_names_ids_and_labels(images):
    (images / "val.csv").write_text('image,caption,uid,cls\n'
                                    'img/a.jpg,"a dog, running",7,dog\n'
                                    'img/c.jpg,a cat,9,cat\nimg/a.jpg,dog,7,dog\n')
    src = build(_cfg(root=str(images), image_key="image", caption_key="caption",
                     id_key="uid", label_key="cls"), None)
    assert src.splits() == ["valid"] and src.classes == ["cat", "dog"]
    refs = src.refs("valid")
    assert [(r.id, r.label, r.texts) for r in refs] == [("7", 1, ("a dog, running", "dog")),
                                                       ("9", 0, ("a cat",))]
    assert src.captions("valid") == {"7": ["a dog, running", "dog"], "9": ["a cat"]}


def test_jsonl(images):
    rows = [{"filepath": str(images / "img" / "b.jpg"), "title": "absolute path"},
            {"filepath": "img/c.jpg", "title": "relative"}]
    (images / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    src = build(_cfg(root=str(images), splits={"train": "train.jsonl"}), None)
    assert [r.path for r in src.refs("train")] == [str(images / "img" / "b.jpg"),
                                                  str(images / "img" / "c.jpg")]


@pytest.mark.parametrize("text, options, message", [
    ("filepath\tcaption\nimg/a.jpg\tx\n", {}, r"train.tsv:2: no column 'title' \(columns: "
                                              r"filepath, caption\); set data.caption_key"),
    ("filepath\ttitle\nimg/a.jpg\t \n", {}, r"train.tsv:2: empty 'title'"),
    ("filepath\ttitle\tid\nimg/a.jpg\tx\t1\nimg/b.jpg\ty\t1\n", {"id_key": "id"},
     r"train.tsv:3: image id '1' names two images"),
    ("filepath\ttitle\n", {}, r"train.tsv: no rows"),
])
def test_errors_name_file_line_and_column(images, text, options, message):
    (images / "train.tsv").write_text(text)
    with pytest.raises(ClapkitError, match=message):
        build(_cfg(root=str(images), splits={"train": "train.tsv"}, **options), None)


def test_bad_jsonl_line_and_unknown_suffix(images):
    (images / "train.jsonl").write_text('{"filepath": "img/a.jpg", "title": "x"}\n[1, 2]\n')
    with pytest.raises(ClapkitError, match=r"train.jsonl:2: expected a JSON object"):
        build(_cfg(root=str(images), splits={"train": "train.jsonl"}), None)
    (images / "train.txt").write_text("x")
    with pytest.raises(ClapkitError, match=r"suffix '.txt'; use one of .csv, .tsv, .jsonl"):
        build(_cfg(root=str(images), splits={"train": "train.txt"}), None)
    with pytest.raises(ClapkitError, match="none of the tables"):
        build(_cfg(root=str(images), splits={"train": "nothing.csv"}), None)


def test_the_demo_as_tables_reads_like_the_karpathy_file(tmp_path):
    demo = CAPTION_DEMO.ensure(tmp_path / "captions", tiny=True)
    out = write_demo_tables(demo, tmp_path / "tables")
    src = build(_cfg(root=str(out), splits={"train": "train.tsv", "test": "test.tsv"},
                     label_key="label"), None)
    doc = json.loads((demo / "dataset_coco.json").read_text())
    train = [e for e in doc["images"] if e["split"] == "train"]
    refs = src.refs("train")
    assert len(refs) == len(train)
    assert [r.texts for r in refs] == [tuple(s["raw"] for s in e["sentences"]) for e in train]
