"""The `caer` plugin on tiny trees in the CLIP-CAER layout."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from datatrees import BOX, GRAY, RED, mean_colour, write_caer

from clapkit.data.base import ClipDataset
from clapkit.errors import ClapkitError

CLIPS = [("train/Anger/0001.avi", 10, 0, True),
         ("train/Happy/0002.avi", 6, 3, False),         # a frame folder train/Happy/0002/
         ("train/Sad/0003.avi", 3, 5, True)]            # shorter than num_frames


@pytest.fixture
def tree(tmp_path):
    boxes = {"CAER/train/Anger/0001": BOX,               # published style: prefix, no ext
             "train/Happy/0002.avi": BOX}                # with extension, no prefix
    return write_caer(tmp_path / "CAER", CLIPS, boxes)   # Sad/0003 has no box


def test_items_labels_and_box_keys(make, tree):
    src = make("caer", root=str(tree), num_frames=4, box_margin=0.0)
    assert src.classes == ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    assert src.splits() == ["train"]
    refs = src.refs("train")
    assert [(r.id, r.label, r.num_frames) for r in refs] == [
        ("train/Anger/0001", 0, 10), ("train/Happy/0002", 3, 6), ("train/Sad/0003", 5, 3)]
    assert refs[0].boxes["face"] == tuple(map(float, BOX))
    assert refs[1].boxes["face"] == tuple(map(float, BOX))
    assert "face" not in refs[2].boxes
    rep = src.box_reports["train"]
    assert (rep.total, rep.missing) == (3, ["train/Sad/0003"])


def test_face_crop_comes_from_the_box_and_context_is_the_frame(make, tree):
    src = make("caer", root=str(tree), num_frames=4, box_margin=0.0)
    for ref in src.refs("train")[:2]:
        out = src.load(ref, False, random.Random(0))
        assert len(out["face"]) == len(out["context"]) == 4
        for face, ctx in zip(out["face"], out["context"]):
            assert face.size == (20, 20)
            assert np.abs(mean_colour(face) - RED).max() < 20
            assert ctx.size == (64, 64)                          # letterboxed 64x48
            assert ctx.getpixel((32, 2)) == (0, 0, 0)            # padding band
            assert np.abs(np.array(ctx.getpixel((5, 30))) - GRAY).max() < 20


def test_missing_box_falls_back_to_centre_crop_and_is_reported(make, tree, caplog):
    src = make("caer", root=str(tree), num_frames=4, fallback_scale=0.5)
    with caplog.at_level(logging.WARNING, logger="clapkit.data"):
        ref = src.refs("train")[2]
    assert "1 of 3 items have no face box" in caplog.text and "train/Sad/0003" in caplog.text
    out = src.load(ref, True, random.Random(1))
    assert out["face"][0].size == (24, 24)                      # 0.5 x shorter side 48
    # short clip: 3 frames padded to 4 with the last one
    assert len(out["face"]) == 4


def test_strict_boxes_error_names_clip_and_box_file(make, tree):
    src = make("caer", root=str(tree), strict_boxes=True)
    with pytest.raises(ClapkitError, match=r"train/Sad/0003.*caer_video_faces\.json"):
        src.refs("train")


def test_sampling_uses_segment_centres_in_eval_and_rng_in_train(make, tree):
    src = make("caer", root=str(tree), num_frames=5)
    ref = src.refs("train")[0]                                  # 10 frames, index coded
    ctx_eval = src.load(ref, False, random.Random(0))["context"]
    # the context is letterboxed 64x48 -> 64x64: frame row -4 sits at 64 - 8 - 4
    eval_codes = [int(round(np.asarray(f)[52, 3].mean() / 10)) for f in ctx_eval]
    assert eval_codes == [1, 3, 5, 7, 9]
    a = src.load(ref, True, random.Random(7))["context"]
    b = src.load(ref, True, random.Random(7))["context"]
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    train_codes = [int(round(np.asarray(f)[52, 3].mean() / 10)) for f in a]
    assert all(2 * j <= c < 2 * j + 2 for j, c in enumerate(train_codes))


def test_clip_dataset_applies_the_transform(make, tree):
    import torch
    src = make("caer", root=str(tree), num_frames=3)
    tf = lambda im: torch.from_numpy(np.asarray(im.resize((16, 16)), np.float32)).permute(2, 0, 1)
    item = ClipDataset(src, "train", tf, train=True, seed=1)[1]
    assert item["id"] == "train/Happy/0002" and item["label"] == 3
    assert {k: tuple(v.shape) for k, v in item["streams"].items()} == {
        "face": (3, 3, 16, 16), "context": (3, 3, 16, 16)}


def test_crop_body_uses_the_body_box(make, tmp_path):
    root = write_caer(tmp_path / "CAER", CLIPS[:1], {"CAER/train/Anger/0001": BOX})
    (root / "body.json").write_text('{"train/Anger/0001": [10, 0, 50, 48]}')
    src = make("caer", root=str(root), num_frames=2, crop_body=True, body_boxes="body.json")
    ctx = src.load(src.refs("train")[0], False, random.Random(0))["context"][0]
    assert ctx.size == (48, 48)                                  # 40x48 body, letterboxed


def test_malformed_line_names_file_and_line(make, tmp_path):
    root = write_caer(tmp_path / "CAER", CLIPS[:1], None,
                      train_list="train/Anger/0001.avi 10 0\n\ntrain/Anger/0002.avi ten 0\n")
    with pytest.raises(ClapkitError, match=r"train\.txt:3: malformed annotation line"):
        make("caer", root=str(root)).refs("train")


def test_label_out_of_range_mentions_label_base(make, tmp_path):
    root = write_caer(tmp_path / "CAER", CLIPS[:1], None,
                      train_list="train/Anger/0001.avi 10 7\n")
    with pytest.raises(ClapkitError, match=r"train\.txt:1: label 7 .*label_base = 0"):
        make("caer", root=str(root)).refs("train")


def test_missing_root_says_where_to_get_it_and_the_demo_alternative(make, tmp_path):
    with pytest.raises(ClapkitError) as exc:
        make("caer", root=str(tmp_path / "nowhere"))
    msg = str(exc.value)
    assert str(tmp_path / "nowhere") in msg and "caer-dataset.github.io" in msg
    assert "clapkit data make-demo" in msg


def test_no_annotation_list_is_an_error_listing_the_expected_files(make, tmp_path):
    (tmp_path / "CAER").mkdir()
    with pytest.raises(ClapkitError, match=r"caer_video_annotations/train\.txt"):
        make("caer", root=str(tmp_path / "CAER"))


def test_fingerprint_tracks_boxes_and_options(make, tree):
    a = make("caer", root=str(tree)).fingerprint("train")
    assert a == make("caer", root=str(tree)).fingerprint("train")
    assert a != make("caer", root=str(tree), num_frames=8).fingerprint("train")
    assert a != make("caer", root=str(tree), face_boxes="none.json").fingerprint("train")
