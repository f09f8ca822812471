"""Feature-cache content checks: checksums per block, identity vs file name, stream files
that disagree about their items."""

from __future__ import annotations

import logging
import os
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_cache import RandomImages, backbone, read_all  # noqa: F401 - fixture

from clapkit.cache import ensure_cache, ensure_caches, open_cached, store, verify
from clapkit.errors import ClapkitError


def _flip(path, block: int = 0, nbytes: int = 64) -> None:
    """XOR bytes in the middle of feature chunk ``block`` on disk (what the review did)."""
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(block)
        off, n = info.byte_offset, info.size
    with open(path, "r+b") as fh:
        fh.seek(off + n // 2)
        b = bytearray(fh.read(nbytes))
        fh.seek(off + n // 2)
        fh.write(bytes(x ^ 0x55 for x in b))


def _small_chunks(monkeypatch):
    monkeypatch.setattr(store, "CHUNK_BYTES", 2 * 1 * 128 * 2)   # 2 rows of [1, 128] fp16


def test_flipped_feature_bytes_fail_verify_and_open_and_are_rebuilt(backbone, tmp_path, caplog):
    src = RandomImages()
    path = ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    good = read_all(path)[0]
    assert verify(path) is None
    _flip(path)
    problem = verify(path)
    assert problem is not None and ("checksum" in problem or "non-finite" in problem)
    from clapkit.cache.cli import cache as cache_group
    res = CliRunner().invoke(cache_group, ["verify", str(path)])
    assert isinstance(res.exception, ClapkitError)
    with pytest.raises(ClapkitError, match="corrupted|non-finite"):
        open_cached(path)                   # the cheap check at open sees the first block
    with caplog.at_level(logging.WARNING):
        ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    assert "rebuilding" in caplog.text and verify(path) is None
    np.testing.assert_array_equal(read_all(path)[0], good)


def test_verify_checks_every_block_not_only_the_sampled_ones(backbone, tmp_path, monkeypatch):
    _small_chunks(monkeypatch)
    src = RandomImages(sizes={"train": 20})
    path = ensure_cache(backbone, src, "train", cache_dir=tmp_path, progress=False)
    with h5py.File(path, "r") as f:
        nblocks = f["crc32"].shape[0]
    assert nblocks == 10
    hidden = next(b for b in range(nblocks) if b not in store.sample_blocks(nblocks))
    _flip(path, hidden, nbytes=8)
    assert store.published_problem(path) is None        # cheap check: sampled blocks only
    problem = verify(path)
    assert problem is not None and f"rows {hidden * 2}.." in problem


def test_flipped_ids_or_labels_are_caught_at_open(backbone, tmp_path):
    path = ensure_cache(backbone, RandomImages(), "valid", cache_dir=tmp_path, progress=False)
    with h5py.File(path, "r+") as f:
        f["labels"][0] = (int(f["labels"][0]) + 1) % 3
    assert "ids or labels" in (store.published_problem(path) or "")


def test_verify_compares_identity_with_file_name(backbone, tmp_path):
    path = ensure_cache(backbone, RandomImages(), "valid", cache_dir=tmp_path, progress=False)
    renamed = path.with_name("valid-image-eval-0000000000000000.h5")
    shutil.copy(path, renamed)
    problem = verify(renamed)
    assert problem is not None and path.name in problem
    assert verify(path) is None


def test_file_without_checksums_is_rebuilt(backbone, tmp_path, caplog):
    path = ensure_cache(backbone, RandomImages(), "valid", cache_dir=tmp_path, progress=False)
    with h5py.File(path, "r+") as f:
        del f["crc32"]
    assert "no checksums" in verify(path)
    with caplog.at_level(logging.WARNING):
        ensure_cache(backbone, RandomImages(), "valid", cache_dir=tmp_path, progress=False)
    assert "no checksums" in caplog.text and verify(path) is None


def _relist(path, ids, labels):
    """Make ``path`` a well-formed, sealed file of another item list (as a file left from an
    older build with the same fingerprint would be)."""
    with h5py.File(path, "r+") as f:
        f["ids"][...] = np.array(ids, dtype=object)
        f["labels"][...] = labels
        store.seal(f)


def test_stream_files_that_disagree_name_the_file_and_only_it_is_rebuilt(backbone, tmp_path,
                                                                         caplog):
    src = RandomImages(streams=("face", "context"))
    face, context = ensure_caches(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    with h5py.File(context, "r") as f:
        ids, labels = list(f["ids"].asstr()[...]), f["labels"][...]
    _relist(context, ids[::-1], labels[::-1])
    assert verify(context) is None              # well-formed, just other items
    with pytest.raises(ClapkitError) as err:
        open_cached([face, context])
    assert f"rebuild {context}" in str(err.value)
    face_mtime = os.stat(face).st_mtime_ns
    with caplog.at_level(logging.WARNING):
        again = ensure_caches(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    assert again == [face, context]
    assert str(context) in caplog.text and "other items" in caplog.text
    assert str(face) not in caplog.text and os.stat(face).st_mtime_ns == face_mtime
    ds = open_cached([face, context])
    assert ds.ids == ids


def test_disagreement_among_three_files_names_the_odd_one(backbone, tmp_path):
    src = RandomImages(streams=("a", "b", "c"))
    a, b, c = ensure_caches(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    with h5py.File(b, "r") as f:
        ids, labels = list(f["ids"].asstr()[...]), f["labels"][...]
    _relist(b, ids[::-1], labels[::-1])
    with pytest.raises(ClapkitError) as err:
        open_cached([a, b, c])
    assert f"rebuild {b} " in str(err.value)
