"""One list-file clip source serves CAER, CAER-S and RAER (and any list-layout dataset)."""

from __future__ import annotations

import attrs
import pytest
from PIL import Image

from clapkit.data.list_source import ListClipSource
from clapkit.data.sources import ClipConfig
from clapkit.errors import ClapkitError


@attrs.frozen(kw_only=True)
class StillsConfig(ClipConfig):
    root: str
    annotations: dict[str, str] = attrs.field(factory=lambda: {"train": "lists/train.txt"})
    face_boxes: str | None = "faces.json"
    body_boxes: str | None = None
    label_base: int = 1
    num_frames: int = 1


class StillsSource(ListClipSource):
    """A new list-layout dataset is a few class attributes."""

    name, dataset = "stills", "Stills"
    CLASSES = ["a", "b", "c"]
    with_frames = False
    strip_suffix = False


def _tree(tmp_path, lines: str):
    (tmp_path / "lists").mkdir()
    (tmp_path / "img").mkdir()
    for n in ("x.png", "y.png"):
        Image.new("RGB", (20, 16), (200, 10, 10)).save(tmp_path / "img" / n)
    (tmp_path / "lists" / "train.txt").write_text(lines)
    (tmp_path / "faces.json").write_text('{"img/x.png": [2, 2, 12, 12]}')


def test_a_list_layout_dataset_is_a_few_attributes(tmp_path):
    _tree(tmp_path, "img/x.png 2\nimg/y.png 1\n")
    src = StillsSource.from_config(StillsConfig(root=str(tmp_path)), tmp_path)
    items = src.scan("train")
    assert [(i.id, i.label, i.num_frames, i.box_key) for i in items] == [
        ("img/x.png", 1, 1, "img/x.png"), ("img/y.png", 0, 1, "img/y.png")]
    assert items[0].path == tmp_path / "img" / "x.png"
    assert src.splits() == ["train"] and src.face_file == tmp_path / "faces.json"
    assert src.describe()["label_base"] == 1
    a = src.fingerprint("train")
    zero = StillsSource.from_config(StillsConfig(root=str(tmp_path), label_base=0), tmp_path)
    assert zero.describe()["label_base"] == 0 and zero.fingerprint("train") != a


def test_label_out_of_range_names_the_list_line(tmp_path):
    _tree(tmp_path, "img/x.png 1\nimg/y.png 4\n")
    src = StillsSource.from_config(StillsConfig(root=str(tmp_path)), tmp_path)
    with pytest.raises(ClapkitError, match=r"train.txt:2: label 4 is out of range"):
        src.scan("train")


def test_caer_caer_s_and_raer_share_it():
    from clapkit_plugins.datasets import caer, caer_s, raer
    for mod, cls in ((caer, caer.CaerSource), (caer_s, caer_s.CaerSSource),
                     (raer, raer.RaerSource)):
        assert issubclass(cls, ListClipSource), cls
        assert not {"scan", "splits", "describe"} & set(vars(cls)), \
            f"{cls.__name__} repeats the list reading"
        assert cls.CLASSES == mod.CLASSES
    assert (caer.CaerSource.with_frames, caer_s.CaerSSource.with_frames,
            raer.RaerSource.with_frames) == (True, False, True)
    assert (caer.CaerSource.strip_suffix, raer.RaerSource.strip_suffix) == (True, False)
