"""Data that lies: replaced media change the fingerprint, empty classes are named, the box
report says what the context stream really does without a body box."""

from __future__ import annotations

import logging
import os
import random
import shutil

import numpy as np
import pytest
from datatrees import BOX, write_caer, write_clip

from clapkit.data.base import classes_without_items, file_identity, require_items_per_class
from clapkit.data.boxes import BoxReport, letterbox
from clapkit.errors import ClapkitError

CLIPS = [("train/Anger/0001.avi", 6, 0, True),
         ("train/Happy/0002.avi", 4, 3, False),          # a frame folder
         ("train/Sad/0003.avi", 5, 5, True)]


@pytest.fixture
def tree(tmp_path):
    return write_caer(tmp_path / "CAER", CLIPS, {"CAER/train/Anger/0001": BOX})


def test_replacing_or_deleting_a_video_changes_the_fingerprint(make, tree):
    fp = make("caer", root=str(tree)).fingerprint("train")
    assert fp == make("caer", root=str(tree)).fingerprint("train")
    video = tree / "train" / "Anger" / "0001.avi"
    # replaced by another clip (same name, other content)
    write_clip(tree, "train/Anger/0001.avi", 9, True)
    replaced = make("caer", root=str(tree)).fingerprint("train")
    assert replaced != fp
    # same size, only the modification time differs: still another file
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = make("caer", root=str(tree)).fingerprint("train")
    assert touched not in (fp, replaced)
    video.unlink()
    assert make("caer", root=str(tree)).fingerprint("train") not in (fp, replaced, touched)


def test_a_frame_folder_losing_a_frame_changes_the_fingerprint(make, tree):
    fp = make("caer", root=str(tree)).fingerprint("train")
    folder = tree / "train" / "Happy" / "0002"
    assert folder.is_dir()
    victim = sorted(folder.iterdir())[-1]
    victim.unlink()
    assert make("caer", root=str(tree)).fingerprint("train") != fp


def test_file_identity_of_missing_and_present_paths(tmp_path):
    assert file_identity(tmp_path / "nope") == "-"
    f = tmp_path / "a.bin"
    f.write_bytes(b"1234")
    assert file_identity(f).startswith("4:")
    assert file_identity(tmp_path).startswith("dir:")


def test_a_class_without_training_items_is_an_error_naming_it(make, tree):
    src = make("caer", root=str(tree))
    empty = classes_without_items(src, "train")
    assert "Anger" not in empty and len(empty) == len(src.classes) - 3
    with pytest.raises(ClapkitError) as err:
        require_items_per_class(src, "train")
    assert repr(empty[0]) in str(err.value) and "train" in str(err.value)
    assert "\n" not in str(err.value)


def test_every_class_present_passes(make, tmp_path):
    src = make("caer", root=str(write_caer(tmp_path / "C", CLIPS, None)))
    clips = [(f"train/{c}/{i:04d}.avi", 3, k, True) for k, c in enumerate(src.classes)
             for i in range(1)]
    src = make("caer", root=str(write_caer(tmp_path / "D", clips, None)))
    require_items_per_class(src, "train")


def test_box_report_names_the_fallback_of_each_stream():
    face = BoxReport("caer", "train", "face", None)
    body = BoxReport("caer", "train", "body", "body.json")
    for r in (face, body):
        r.add("a", False)
    assert "centre crop" in face.summary()
    assert "full frame" in body.summary() and "centre crop" not in body.summary()
    assert "full frame" in body.strict_error().args[0]


def test_missing_body_box_context_really_is_the_full_frame(make, tree, caplog):
    (tree / "body.json").write_text('{"train/Happy/0002": [10, 0, 50, 48]}')
    src = make("caer", root=str(tree), num_frames=2, crop_body=True, body_boxes="body.json")
    with caplog.at_level(logging.WARNING, logger="clapkit.data"):
        refs = src.refs("train")
    assert "no body box" in caplog.text and "full frame" in caplog.text
    plain = make("caer", root=str(tree), num_frames=2)
    ref = refs[0]                                               # Anger: no body box
    got = src.load(ref, False, random.Random(0))["context"]
    want = plain.load(plain.refs("train")[0], False, random.Random(0))["context"]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert got[0].size == (64, 64)                              # 64x48 frame, letterboxed


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickles_may_hold_only_data(make, tmp_path):
    import pickle

    from clapkit.data.demo import ensure_demo
    root = ensure_demo("incremental", tmp_path / "inc", tiny=True)
    src = make("cifar100", root=str(root))
    assert len(src.refs("train")) == 60                 # real layout: numpy arrays load
    meta = root / "cifar-100-python" / "meta"
    marker = tmp_path / "PWNED"
    with open(meta, "wb") as fh:
        pickle.dump({b"fine_label_names": [b"a"], b"x": _Payload(marker)}, fh, protocol=2)
    with pytest.raises(ClapkitError, match="refused global"):
        make("cifar100", root=str(root)).refs("train")
    assert not marker.exists()


def _dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_work_folders_of_a_killed_make_demo_are_swept(tmp_path):
    from clapkit.data.demo import publish_demo
    dead, live = _dead_pid(), os.getpid()
    torn = tmp_path / f".caer.tmp-{dead}-abcd1234"
    old = tmp_path / f".caer.old-{dead}-ffff0000"
    busy = tmp_path / f".caer.tmp-{live}-00000000"        # a generator still running
    for d in (torn, old, busy):
        (d / "train").mkdir(parents=True)

    def make(out, seed, tiny):
        (out / "x.txt").write_text("made")

    root = publish_demo(make, "caer", 1, tmp_path / "caer")
    assert (root / "x.txt").read_text() == "made"
    assert not torn.exists() and not old.exists() and busy.exists()
