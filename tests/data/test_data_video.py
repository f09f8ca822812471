"""Clip reading: AVI round trip through PyAV, frame folders, path resolution."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clapkit.data.video import count_frames, list_frames, read_clip, resolve_clip, write_video
from clapkit.errors import ClapkitError


def _coded(n: int) -> list[np.ndarray]:
    """Frame i is a flat colour that encodes i."""
    return [np.full((48, 64, 3), (20 * i % 256, 255 - 15 * i, 100), np.uint8) for i in range(n)]


def test_avi_round_trip_returns_the_requested_frames_in_order(tmp_path):
    frames = _coded(12)
    write_video(tmp_path / "c.avi", frames)
    assert count_frames(tmp_path / "c.avi") == 12
    want = [7, 0, 3, 3, 11]
    got, names = read_clip(tmp_path / "c.avi", lambda n: want)
    assert names == ["7", "0", "3", "3", "11"]
    for i, im in zip(want, got):
        assert im.mode == "RGB" and im.size == (64, 48)
        assert np.abs(np.asarray(im, float) - frames[i]).mean() < 4


def test_video_with_fewer_frames_than_announced_uses_the_last(tmp_path):
    frames = _coded(5)
    write_video(tmp_path / "c.avi", frames)
    got, _ = read_clip(tmp_path / "c.avi", lambda n: [0, n + 3])   # beyond the end: clamped
    assert np.abs(np.asarray(got[1], float) - frames[4]).mean() < 4


def test_mpeg4_codec_decodes_too(tmp_path):
    frames = _coded(6)
    write_video(tmp_path / "c.avi", frames, codec="mpeg4")
    got, _ = read_clip(tmp_path / "c.avi", lambda n: list(range(n)))
    assert len(got) == 6
    assert np.abs(np.asarray(got[5], float) - frames[5]).mean() < 12


def test_frame_folders_sort_naturally_and_resolve_from_the_avi_name(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in (1, 2, 10):                      # 10.jpg must come after 2.jpg
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frames(folder)] == ["1.png", "2.png", "10.png"]
    assert resolve_clip(tmp_path / "clip.avi") == folder
    got, names = read_clip(tmp_path / "clip.avi", lambda n: [n - 1, 0])
    assert names == ["10.png", "1.png"] and got[0].getpixel((0, 0)) == (200, 0, 0)


def test_missing_clip_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(ClapkitError, match="clip not found: .*nothing.avi"):
        read_clip(tmp_path / "nothing.avi", lambda n: [0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClapkitError, match="holds no image files"):
        read_clip(tmp_path / "empty", lambda n: [0])
    (tmp_path / "bad.avi").write_bytes(b"not a video")
    with pytest.raises(ClapkitError, match="bad.avi"):
        read_clip(tmp_path / "bad.avi", lambda n: [0])
