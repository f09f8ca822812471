"""RAER, DAiSEE, CAER-S, CIFAR-100, ImageFolder and ImageNet-R in their published layouts."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from datatrees import BOX, RED, mean_colour, write_clip

from clapkit.errors import ClapkitError
from clapkit_plugins.datasets import demo_layouts as L


# --- RAER: 1-based labels, per-frame boxes, unpadded frame names ------------------------

def _raer(tmp_path, labels=(1, 5)):
    root = tmp_path / "data"
    ann, bb = root / "RAER" / "annotation", root / "RAER" / "bounding_box"
    ann.mkdir(parents=True)
    bb.mkdir(parents=True)
    clips = ["RAER/images/Class/P001/001", "RAER/images/Class/P001/002"]
    face = {}
    for clip in clips:
        folder = root / clip
        folder.mkdir(parents=True)
        for i in range(1, 12):                        # 1.jpg ... 11.jpg: natural order
            from PIL import Image
            a = np.full((48, 64, 3), 128, np.uint8)
            x = 2 + 4 * i                             # the red square moves with the frame
            a[10:30, x:x + 20] = RED
            Image.fromarray(a).save(folder / f"{i}.jpg", quality=95)
        face[clip] = {f"{i}.jpg": [2 + 4 * i, 10, 22 + 4 * i, 30] for i in range(1, 12)
                      if i != 6}                      # frame 6 has no box: nearest is used
    (ann / "train.txt").write_text("".join(f"{c} 11 {lab}\n" for c, lab in zip(clips, labels)))
    (bb / "face.json").write_text(json.dumps(face))
    (bb / "body.json").write_text(json.dumps({clips[0]: [0, 0, 32, 48]}))
    return root


def test_raer_one_based_labels_and_per_frame_boxes(make, tmp_path):
    src = make("raer", root=str(_raer(tmp_path)), num_frames=11, box_margin=0.0)
    assert src.classes[0] == "Neutrality" and src.splits() == ["train"]
    refs = src.refs("train")
    assert [r.label for r in refs] == [0, 4]
    out = src.load(refs[0], False, random.Random(0))
    for face in out["face"]:                          # every frame's crop finds its square
        assert np.abs(mean_colour(face) - RED).max() < 40
    assert out["context"][0].size == (64, 64)


def test_raer_crop_body_and_label_base_errors(make, tmp_path):
    root = _raer(tmp_path)
    src = make("raer", root=str(root), num_frames=2, crop_body=True)
    ctx = src.load(src.refs("train")[0], False, random.Random(0))["context"][0]
    assert ctx.size == (48, 48)                       # body box 32x48, letterboxed
    bad = _raer(tmp_path / "zero", labels=(0, 1))     # a 0 in a 1-based list
    with pytest.raises(ClapkitError, match=r"train\.txt:1: label 0 .*label_base = 1"):
        make("raer", root=str(bad)).refs("train")
    assert [r.label for r in make("raer", root=str(bad), label_base=0).refs("train")] == [0, 1]


def test_raer_root_may_be_the_raer_folder_itself(make, tmp_path):
    root = _raer(tmp_path)
    src = make("raer", root=str(root / "RAER"), num_frames=2)
    assert len(src.refs("train")) == 2 and src.box_reports["train"].missing == []
    src.load(src.refs("train")[1], True, random.Random(0))


# --- DAiSEE -------------------------------------------------------------------------------

def _daisee(tmp_path):
    root = tmp_path / "DAiSEE"
    (root / "Labels").mkdir(parents=True)
    write_clip(root, "DataSet/Train/110001/1100011002/1100011002.avi", 8, True)
    write_clip(root, "DataSet/Train/110001/1100011003.avi", 8, False)  # frames in 1100011003/
    (root / "Labels" / "TrainLabels.csv").write_text(
        "ClipID,Boredom,Engagement,Confusion,Frustration \n"
        "1100011002.avi,0,2,1,3\n1100011003.avi,1,3,0,0\n1100019999.avi,0,1,0,0\n")
    return root


def test_daisee_layout_target_column_and_missing_clips(make, tmp_path, caplog):
    root = _daisee(tmp_path)
    src = make("daisee", root=str(root), num_frames=4)
    assert src.classes == ["very low engagement", "low engagement", "high engagement",
                           "very high engagement"]
    refs = src.refs("train")
    assert [(r.id, r.label) for r in refs] == [("Train/1100011002", 2), ("Train/1100011003", 3)]
    assert "1100019999.avi" in caplog.text and "skipped" in caplog.text
    frust = make("daisee", root=str(root), target="Frustration").refs("train")
    assert [r.label for r in frust] == [3, 0]
    # no box file: centre crop, counted
    assert len(src.box_reports["train"].missing) == 2
    for r in refs:
        assert src.load(r, True, random.Random(0))["face"][0].size == (34, 34)


def test_daisee_boxes_keyed_by_clip_id(make, tmp_path):
    root = _daisee(tmp_path)
    (root / "faces.json").write_text(json.dumps({"1100011002": BOX,
                                                 "Train/110001/1100011003": BOX}))
    src = make("daisee", root=str(root), face_boxes="faces.json", box_margin=0.0)
    assert all("face" in r.boxes for r in src.refs("train"))
    assert src.box_reports["train"].missing == []
    face = src.load(src.refs("train")[1], False, random.Random(0))["face"][0]
    assert np.abs(mean_colour(face) - RED).max() < 20


def test_daisee_bad_csv_names_file_and_line(make, tmp_path):
    root = _daisee(tmp_path)
    (root / "Labels" / "TrainLabels.csv").write_text("ClipID,Engagement\nx.avi,7\n")
    with pytest.raises(ClapkitError, match=r"TrainLabels\.csv:2: malformed row"):
        make("daisee", root=str(root)).refs("train")


# --- stills --------------------------------------------------------------------------------

def test_caer_s_two_streams_or_one(make, tmp_path):
    root = L.as_caer_s(tmp_path)
    src = make("caer_s", root=str(root))
    refs = src.refs("train")
    assert src.streams == ("face", "context") and src.num_frames == 1
    assert src.box_reports["train"].missing == []
    assert refs[0].id.startswith("train/Angry/")
    one = make("caer_s", root=str(root), two_stream=False)
    out = one.load(one.refs("train")[0], False, random.Random(0))
    assert list(out) == ["image"] and len(out["image"]) == 1


def test_cifar100_pickle_layout(make, tmp_path):
    from clapkit.data.demo import ensure_demo
    root = ensure_demo("incremental", tmp_path / "inc", tiny=True)
    src = make("cifar100", root=str(root))
    assert len(src.classes) == 20 and src.classes[0] == "solid circle"
    assert src.splits() == ["train", "test"]
    refs = src.refs("train")
    assert len(refs) == 60 and sorted(set(r.label for r in refs)) == list(range(20))
    img = src.load(refs[0], True, random.Random(0))["image"][0]
    assert img.size == (32, 32) and img.mode == "RGB"
    assert make("cifar100", root=str(root / "cifar-100-python")).refs("test")[0].id == "test/00000"
    with pytest.raises(ClapkitError, match="cs.toronto.edu"):
        make("cifar100", root=str(tmp_path))


def test_imagefolder_and_imagenet_r_layouts(make, tmp_path):
    folder = make("imagefolder", root=str(L.as_imagefolder(tmp_path)))
    assert folder.splits() == ["train", "test"] and folder.classes[0] == "checkered circle"
    assert len(folder.refs("train")) == 60

    root = L.as_imagenet_r(tmp_path)
    src = make("imagenet_r", root=str(root))
    assert src.classes[:2] == ["solid circle", "striped circle"]   # from README.txt
    assert [len(src.refs(s)) for s in src.splits()] == [60, 20]
    ref = src.refs("train")[0]
    assert ref.id.startswith("train/n") and src.load(ref, False, random.Random(0))["image"]
    # without split lists: a seeded per-class 80/20 cut, stable across builds
    for f in (root / "imagenet_split").iterdir():
        f.unlink()
    a = make("imagenet_r", root=str(root))
    b = make("imagenet_r", root=str(root))
    assert [r.id for r in a.refs("train")] == [r.id for r in b.refs("train")]
    assert len(a.refs("train")) == 60 and len(a.refs("test")) == 20    # 3 + 1 per class
    c = make("imagenet_r", root=str(root), split_seed=1)
    assert [r.id for r in c.refs("train")] != [r.id for r in a.refs("train")]
