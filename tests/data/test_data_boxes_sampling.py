"""Box keys, geometry and TSN sampling."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from clapkit.data.boxes import (BoxIndex, box_for_frame, centre_box, crop, expand_box,
                                frame_boxes, frame_key, letterbox, normalize_key)
from clapkit.data.sampling import segment_bounds, segment_indices
from clapkit.errors import ClapkitError


@pytest.mark.parametrize("raw,want", [
    ("train/Anger/0001.avi", "train/Anger/0001"),
    ("./CAER\\train//Anger/0001.AVI ", "CAER/train/Anger/0001"),
    ("/data/RAER/images/P001/032/", "data/RAER/images/P001/032"),
    ("Train/110001/1100011002/1100011002.avi", "Train/110001/1100011002"),
    ("train/Angry/1769.png", "train/Angry/1769"),
])
def test_normalize_key(raw, want):
    assert normalize_key(raw) == want


def test_index_matches_prefixed_and_extension_keys_but_never_ambiguous_ones():
    idx = BoxIndex({"CAER/train/Anger/0001": [1, 2, 3, 4],
                    "CAER/test/Anger/0001": [5, 6, 7, 8],
                    "/abs/root/train/Sad/0002.avi": [9, 9, 19, 19],
                    "1100011002": [0, 0, 5, 5]})
    assert idx.get("train/Anger/0001.avi") == [1, 2, 3, 4]
    assert idx.get("test/Anger/0001") == [5, 6, 7, 8]
    assert idx.get("train/Sad/0002.avi") == [9, 9, 19, 19]
    # "Anger/0001" ends two keys: never guessed
    assert idx.get("Anger/0001") is None
    # a key that is a trailing part of the item path (DAiSEE clip ids)
    assert idx.get("DataSet/Train/110001/1100011002/1100011002.avi") == [0, 0, 5, 5]
    assert idx.get("train/Fear/0001") is None


def test_bad_box_entry_names_the_file_and_key():
    with pytest.raises(ClapkitError, match=r"faces\.json: entry 'x'.*x2 > x1"):
        frame_boxes([5, 5, 1, 1], "faces.json: entry 'x'")


def test_expand_box_margin_square_and_clamp():
    assert expand_box((10, 10, 20, 20), 0.0, 100, 100) == (10, 10, 20, 20)
    assert expand_box((10, 10, 20, 20), 0.5, 100, 100) == (5, 5, 25, 25)
    # a tall box becomes square around its centre
    assert expand_box((10, 10, 20, 30), 0.0, 100, 100) == (5, 10, 25, 30)
    # sticking out on the left: moved inside, size kept
    assert expand_box((-5, 0, 15, 20), 0.0, 100, 100) == (0, 0, 20, 20)
    # larger than the frame: cut to the frame
    assert expand_box((-50, -50, 150, 150), 0.0, 64, 48) == (0, 0, 64, 48)
    x1, y1, x2, y2 = expand_box((50, 30, 70, 50), 0.3, 64, 48)
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48 and x2 - x1 == y2 - y1


def test_centre_fallback_and_letterbox():
    img = Image.new("RGB", (80, 40))
    assert centre_box(80, 40, 0.5) == (30.0, 10.0, 50.0, 30.0)
    assert crop(img, None, 0.3, 0.5).size == (20, 20)   # margin ignored for the fallback
    lb = letterbox(Image.new("RGB", (80, 40), (255, 255, 255)))
    assert lb.size == (80, 80)
    assert lb.getpixel((40, 5)) == (0, 0, 0) and lb.getpixel((40, 40)) == (255, 255, 255)


def test_per_frame_boxes_use_own_then_nearest_frame():
    table = frame_boxes({"1.jpg": [0, 0, 1, 1], "5.jpg": [5, 5, 6, 6]}, "f")
    assert frame_key("00005.png") == "5"
    assert box_for_frame(table, "5.jpg", 4) == (5.0, 5.0, 6.0, 6.0)
    assert box_for_frame(table, "2.jpg", 1) == (0.0, 0.0, 1.0, 1.0)
    assert box_for_frame(table, "4.jpg", 3) == (5.0, 5.0, 6.0, 6.0)
    assert box_for_frame(None, "4.jpg", 3) is None


def test_eval_sampling_takes_segment_centres():
    assert segment_indices(32, 4, False) == [4, 12, 20, 28]
    assert segment_indices(10, 5, False) == [1, 3, 5, 7, 9]
    assert segment_indices(16, 16, False) == list(range(16))


def test_train_sampling_is_random_within_segments_and_seeded():
    n, k = 50, 8
    bounds = segment_bounds(n, k)
    assert bounds[0][0] == 0 and bounds[-1][1] == n          # the whole clip is covered
    seen = [set() for _ in range(k)]
    for s in range(200):
        idx = segment_indices(n, k, True, random.Random(s))
        assert len(idx) == k and idx == sorted(idx)
        for i, (lo, hi) in zip(idx, bounds):
            assert lo <= i < hi
        for j, i in enumerate(idx):
            seen[j].add(i)
    assert all(len(s) == hi - lo for s, (lo, hi) in zip(seen, bounds))  # every frame reachable
    assert segment_indices(n, k, True, random.Random(3)) == segment_indices(
        n, k, True, random.Random(3))


def test_short_clips_are_edge_padded():
    assert segment_indices(3, 6, True, random.Random(0)) == [0, 1, 2, 2, 2, 2]
    assert segment_indices(3, 6, False) == [0, 1, 2, 2, 2, 2]
    assert segment_indices(1, 4, False) == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        segment_indices(0, 4, False)
