"""HDF5 feature cache: round trip, invalidation, resume, corruption, sharding, reader, CLI."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clapkit.cache import (CachedFeatures, cache_plan, ensure_cache, ensure_caches, info,
                           open_cached, verify)
from clapkit.cache import store
from clapkit.cache.builder import encode_frames
from clapkit.cache.lock import BuildLock
from clapkit.data.base import ClipDataset, DatasetSource, ItemRef
from clapkit.errors import ClapkitError
from clapkit_plugins.backbones.open_clip import TINY_MODEL, OpenClipBackbone, OpenClipConfig


class RandomImages(DatasetSource):
    """Random RGB images (deterministic per id/stream/frame); train sampling shifts them."""

    classes = ["cat", "dog", "owl"]

    def __init__(self, sizes: dict[str, int] | None = None, streams=("image",),
                 num_frames: int = 1, tag: str = "") -> None:
        self.sizes = sizes or {"train": 13, "valid": 5}
        self.streams, self.num_frames, self.tag = tuple(streams), num_frames, tag

    def splits(self):
        return list(self.sizes)

    def refs(self, split):
        return [ItemRef(id=f"{split}/{self.tag}{i:03d}", label=i % 3, path=f"{split}/{i}")
                for i in range(self.sizes[split])]

    def load(self, ref, train, rng: random.Random):
        out = {}
        for s in self.streams:
            frames = []
            for t in range(self.num_frames):
                seed = int.from_bytes(hashlib.sha256(f"{ref.id}/{s}/{t}".encode()).digest()[:4],
                                      "little")
                arr = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
                if train:
                    arr = np.roll(arr, rng.randint(0, 20), axis=1)
                frames.append(Image.fromarray(arr))
            out[s] = frames
        return out

    def describe(self):
        return {**super().describe(), "tag": self.tag}


@pytest.fixture(scope="module")
def backbone():
    return OpenClipBackbone(OpenClipConfig(model=TINY_MODEL))


def direct_features(backbone, source, split, stream="image", train=False, epoch=0):
    ds = ClipDataset(source, split, backbone.transform(train), train)
    ds.set_epoch(epoch)
    frames = torch.stack([ds[i]["streams"][stream] for i in range(len(ds))])
    return encode_frames(backbone, frames, 16)


def read_all(path: Path):
    with h5py.File(path, "r") as f:
        return f["features"][...], f["labels"][...], list(f["ids"].asstr()[...]), \
            store.read_attrs(f)


def test_round_trip_matches_direct_encoding(backbone, tmp_path):
    src = RandomImages(num_frames=2)
    path = ensure_cache(backbone, src, "train", cache_dir=tmp_path, batch_size=8,
                        progress=False)
    feats, labels, ids, attrs_ = read_all(path)
    ref = direct_features(backbone, src, "train")
    assert feats.dtype == np.float16 and feats.shape == (13, 2, backbone.embed_dim)
    np.testing.assert_allclose(feats.astype(np.float32), ref.numpy(), rtol=2e-3, atol=2e-3)
    assert ids == [r.id for r in src.refs("train")]
    assert labels.tolist() == [r.label for r in src.refs("train")]
    assert attrs_["complete"] and attrs_["done"] == 13
    assert attrs_["backbone_fingerprint"] == backbone.fingerprint()
    assert attrs_["dataset_fingerprint"] == src.fingerprint("train")
    with h5py.File(path, "r") as f:
        assert f["features"].chunks is not None and f["features"].compression is None
    # second call reuses the file (no rebuild): same inode and mtime
    st = path.stat()
    assert ensure_cache(backbone, src, "train", cache_dir=tmp_path, progress=False) == path
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino
    assert verify(path) is None


def test_reader_items_batches_and_memory(backbone, tmp_path):
    src = RandomImages(streams=("face", "context"), num_frames=2)
    paths = ensure_caches(backbone, src, "train", cache_dir=tmp_path, batch_size=6,
                          progress=False)
    assert len(paths) == 2
    ds = open_cached(paths)
    assert set(ds.streams) == {"face", "context"} and len(ds) == 13
    item = ds[4]
    assert item["id"] == "train/004" and item["label"] == 1 and item["index"] == 4
    assert item["features"]["face"].shape == (2, backbone.embed_dim)
    assert item["features"]["face"].dtype == torch.float32
    ref = direct_features(backbone, src, "train", "context")
    torch.testing.assert_close(item["features"]["context"], ref[4], rtol=2e-3, atol=2e-3)
    order = [7, 2, 2, 12, 0]
    batch = ds.read_batch(order)
    assert batch["id"] == [f"train/{i:03d}" for i in order]
    assert batch["index"].tolist() == order and batch["label"].tolist() == [i % 3 for i in order]
    torch.testing.assert_close(batch["features"]["context"], ref[order], rtol=2e-3, atol=2e-3)
    mem = CachedFeatures(paths, in_memory=True)
    assert mem.in_memory
    torch.testing.assert_close(mem.read_batch(order)["features"]["face"],
                               batch["features"]["face"], rtol=0, atol=0)
    # the batch loader visits every item once per epoch; shuffled with a generator
    seen = [i for b in ds.loader(4, shuffle=True, generator=torch.Generator().manual_seed(0))
            for i in b["index"].tolist()]
    assert sorted(seen) == list(range(13)) and seen != list(range(13))
    # a plain DataLoader with default collation goes through __getitems__
    plain = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert plain["features"]["face"].shape == (5, 2, backbone.embed_dim)
    assert plain["id"] == [f"train/{i:03d}" for i in range(5)]
    # worker processes open their own handles
    seen_w = [i for b in ds.loader(5, num_workers=2) for i in b["index"].tolist()]
    assert seen_w == list(range(13))


def test_files_of_different_splits_do_not_combine(backbone, tmp_path):
    src = RandomImages()
    a = ensure_cache(backbone, src, "train", cache_dir=tmp_path, progress=False)
    b = ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    with pytest.raises(ClapkitError, match="disagree"):
        open_cached([a, b])


def test_train_views_differ_and_rotate_with_epoch(backbone, tmp_path):
    src = RandomImages()
    paths = ensure_caches(backbone, src, "train", train=True, views=2, cache_dir=tmp_path,
                          progress=False)
    v0, v1 = (read_all(p)[0] for p in paths)
    assert not np.allclose(v0, v1)
    ds = open_cached(paths)
    ds.set_epoch(1)
    np.testing.assert_array_equal(ds.read_batch([3])["features"]["image"][0].numpy(),
                                  v1[3].astype(np.float32))
    ds.set_epoch(2)
    np.testing.assert_array_equal(ds.read_batch([3])["features"]["image"][0].numpy(),
                                  v0[3].astype(np.float32))


def test_identity_mismatch_in_file_is_rebuilt(backbone, tmp_path, caplog):
    src = RandomImages()
    path = ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    good = read_all(path)[0]
    with h5py.File(path, "r+") as f:
        f.attrs["backbone_fingerprint"] = "someone-else"
        f["features"][...] = 0
    with caplog.at_level(logging.WARNING):
        again = ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    assert again == path and "backbone_fingerprint" in caplog.text
    np.testing.assert_array_equal(read_all(path)[0], good)


def test_changed_checkpoint_or_dataset_invalidates(backbone, tmp_path):
    src = RandomImages()
    path = ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    other = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, seed=1))
    assert other.fingerprint() != backbone.fingerprint()
    path2 = ensure_cache(other, src, "valid", cache_dir=tmp_path, progress=False)
    assert path2 != path
    assert not np.allclose(read_all(path)[0], read_all(path2)[0])
    # a checkpoint file with other weights, loaded the way a user's checkpoint is
    ckpt = tmp_path / "other.pt"
    torch.save(other.model.state_dict(), ckpt)
    from_file = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, pretrained=str(ckpt)))
    path3 = ensure_cache(from_file, src, "valid", cache_dir=tmp_path, progress=False)
    assert path3 not in (path, path2)
    np.testing.assert_array_equal(read_all(path3)[0], read_all(path2)[0])
    # a different item list gives a different dataset fingerprint, hence another file
    path4 = ensure_cache(backbone, RandomImages(tag="x"), "valid", cache_dir=tmp_path,
                         progress=False)
    assert path4 != path


def test_interrupted_build_resumes_to_identical_file(backbone, tmp_path, monkeypatch):
    src = RandomImages(num_frames=2)
    full = ensure_cache(backbone, src, "train", train=True, cache_dir=tmp_path / "a",
                        batch_size=4, progress=False)   # 2 items per chunk -> 7 chunks

    calls = {"n": 0}
    real = backbone.encode_image

    def failing(images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(images)

    monkeypatch.setattr(backbone, "encode_image", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(backbone, src, "train", train=True, cache_dir=tmp_path / "b",
                     batch_size=4, progress=False)
    monkeypatch.setattr(backbone, "encode_image", real)
    final = tmp_path / "b" / full.name
    partial = store.partial_path(final)
    assert not final.exists() and partial.exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["done"] == 4 and not f.attrs["complete"]
        kept = f["features"][:4].copy()
    assert not (tmp_path / "b" / (full.name + ".lock")).exists()

    encoded = []
    monkeypatch.setattr(backbone, "encode_image",
                        lambda x: encoded.append(len(x)) or real(x))
    resumed = ensure_cache(backbone, src, "train", train=True, cache_dir=tmp_path / "b",
                           batch_size=4, progress=False)
    assert resumed == final and not partial.exists()
    assert sum(encoded) == (13 - 4) * 2               # only the missing rows were encoded
    a, b = read_all(full), read_all(final)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    np.testing.assert_array_equal(b[0][:4], kept)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "drop_dataset", "counter"])
def test_damaged_file_is_detected_and_rebuilt(backbone, tmp_path, caplog, damage):
    src = RandomImages()
    path = ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    good = read_all(path)[0]
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "garbage":
        path.write_bytes(b"not an hdf5 file at all")
    elif damage == "drop_dataset":
        with h5py.File(path, "r+") as f:
            del f["labels"]
    else:
        with h5py.File(path, "r+") as f:
            f.attrs["done"] = 3
    assert verify(path) is not None
    with pytest.raises(ClapkitError):
        open_cached(path)
    with caplog.at_level(logging.WARNING):
        ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    assert "rebuilding" in caplog.text
    assert verify(path) is None
    np.testing.assert_array_equal(read_all(path)[0], good)


def test_sharded_build_equals_single_build(backbone, tmp_path):
    src = RandomImages(streams=("face", "context"), num_frames=2)
    single = ensure_caches(backbone, src, "train", train=True, views=1, cache_dir=tmp_path / "s",
                           batch_size=4, progress=False)
    kw = dict(train=True, views=1, cache_dir=tmp_path / "d", batch_size=4, progress=False,
              world_size=2)
    with pytest.raises(ClapkitError, match="shards not complete"):
        ensure_caches(backbone, src, "train", rank=0, shard_timeout=0.0, **kw)
    out1 = ensure_caches(backbone, src, "train", rank=1, **kw)
    assert not any(p.exists() for p in out1)                     # rank 1 only wrote its shard
    assert all(store.shard_path(p, 1, 2).exists() for p in out1)
    out0 = ensure_caches(backbone, src, "train", rank=0, **kw)
    assert [p.name for p in out0] == [p.name for p in single]
    for a, b in zip(single, out0):
        fa, fb = read_all(a), read_all(b)
        np.testing.assert_array_equal(fa[0], fb[0])
        np.testing.assert_array_equal(fa[1], fb[1])
        assert fa[2] == fb[2]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(p.name for p in out0)


def test_lock_held_by_live_process_times_out_and_stale_lock_is_cleared(backbone, tmp_path):
    src = RandomImages()
    path = store.cache_path(tmp_path, store.CacheKey(backbone.fingerprint(),
                                                     src.fingerprint("valid"), "valid", "image"))
    lock = BuildLock(path)
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    import socket
    lock.path.write_text(f"{os.getpid()} {socket.gethostname()} 0\n")
    with pytest.raises(ClapkitError, match="held by another builder"):
        ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False,
                     lock_timeout=0.3)
    lock.path.write_text(f"999999999 {socket.gethostname()} 0\n")       # no such process
    assert ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False,
                        lock_timeout=0.3) == path
    assert not lock.path.exists()


def test_bad_requests_are_clear_errors(backbone, tmp_path):
    src = RandomImages(streams=("face", "context"))
    with pytest.raises(ClapkitError, match="name one"):
        ensure_cache(backbone, src, "train", cache_dir=tmp_path)
    with pytest.raises(ClapkitError, match="split 'test' not in the dataset"):
        ensure_cache(backbone, src, "test", stream="face", cache_dir=tmp_path)
    with pytest.raises(ClapkitError, match="stream.*body"):
        ensure_caches(backbone, src, "train", streams=["body"], cache_dir=tmp_path)


def test_cache_plan():
    import attrs
    from clapkit.sections import CacheConfig, DataKeys
    keys = DataKeys(train_split="train", valid_split="valid", test_split="test")
    assert cache_plan(keys, CacheConfig(), ["train", "valid"]) == [("train", False, 1),
                                                                   ("valid", False, 1)]
    assert cache_plan(keys, attrs.evolve(CacheConfig(), views=3), ["train", "test"]) == \
        [("train", True, 3), ("test", False, 1)]


def test_info_and_verify_cli(backbone, tmp_path):
    from clapkit.cache.cli import cache as cache_group
    src = RandomImages()
    path = ensure_cache(backbone, src, "valid", cache_dir=tmp_path, progress=False)
    runner = CliRunner()
    res = runner.invoke(cache_group, ["info", str(path)])
    assert res.exit_code == 0, res.output
    assert "complete" in res.output and f"[5, 1, {backbone.embed_dim}]" in res.output
    assert backbone.fingerprint() in res.output
    res = runner.invoke(cache_group, ["verify", str(path)])
    assert res.exit_code == 0 and "ok" in res.output
    with h5py.File(path, "r+") as f:
        f["features"][2, 0, 0] = np.nan
    res = runner.invoke(cache_group, ["verify", str(path)])
    assert isinstance(res.exception, ClapkitError) and "non-finite" in str(res.exception)
    info_bad = info(tmp_path / "nope.h5")
    assert info_bad.problem == "missing"


CLI_PLUGIN = '''
import attrs
from clapkit import hookimpl
from test_cache import RandomImages


@attrs.frozen
class RandCfg:
    n_train: int = 6
    n_valid: int = 3


@attrs.frozen
class NoCfg:
    pass


def make_data(cfg, ctx):
    """Random images for the cache CLI test."""
    assert ctx.backbone is not None
    return RandomImages({"train": cfg.n_train, "valid": cfg.n_valid})


def make_nothing(cfg, ctx):
    """Stand-in component (the cache build never builds it)."""
    return None


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "cache_test_images", make_data, config=RandCfg)
    registrar.add("prompt", "cache_test_prompt", make_nothing, config=NoCfg)
    registrar.add("loss", "cache_test_loss", make_nothing, config=NoCfg)
    registrar.add("head", "cache_test_head", make_nothing, config=NoCfg)
'''

CLI_RECIPE = '''
plugins = ["cache_cli_test_plugin"]

[data]
plugin = "cache_test_images"
n_train = 7

[backbone]
plugin = "open_clip"
model = "clapkit-tiny"

[prompts.p]
plugin = "cache_test_prompt"

[head]
plugin = "cache_test_head"

[losses.l]
plugin = "cache_test_loss"

[cache]
batch_size = 4
'''


def test_cache_build_cli_from_recipe(tmp_path, monkeypatch):
    from clapkit.cache.cli import cache as cache_group
    from clapkit.cli import main
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "cache_cli_test_plugin.py").write_text(CLI_PLUGIN)
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    recipe = tmp_path / "r.toml"
    recipe.write_text(CLI_RECIPE)
    out = tmp_path / "c"
    runner = CliRunner()
    res = runner.invoke(cache_group, ["build", str(recipe), "--set", f"cache.dir='{out}'",
                                      "--quiet"])
    assert res.exit_code == 0, (res.output, res.exception)
    files = sorted(out.glob("*.h5"))
    assert [f.name.split("-")[0] for f in files] == ["train", "valid"]
    assert "[7, 1, 128]" in res.output and "[3, 1, 128]" in res.output  # clapkit-tiny: D=128
    assert all(verify(f) is None for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]
    res = runner.invoke(cache_group, ["build", str(recipe), "--set", f"cache.dir='{out}'",
                                      "--quiet", "--split", "valid"])
    assert res.exit_code == 0 and "train" not in res.output
    assert [f.stat().st_mtime_ns for f in files] == mtimes          # reused, not rebuilt
    # views > 1: the train split is cached with the training transform, one file per view
    res = runner.invoke(cache_group, ["build", str(recipe), "--set", f"cache.dir='{out}'",
                                      "--set", "cache.views=2", "--quiet", "--split", "train"])
    assert res.exit_code == 0
    assert len(list(out.glob("train-image-train-v*.h5"))) == 2
    res = runner.invoke(cache_group, ["build", str(recipe), "--split", "test"])
    assert isinstance(res.exception, ClapkitError) and "split(s) test" in str(res.exception)
    # through the real entry point: exit status 2 and one line
    files[0].write_bytes(b"broken")
    with pytest.raises(SystemExit) as exc:
        main(["cache", "verify", str(files[0])])
    assert exc.value.code == 2
