"""Feature-cache benchmark: one epoch that encodes images vs one epoch read from the cache.

For the shipped tiny model and for ViT-B-32 (random init, no download) it times

- an *encode epoch*: the ClipDataset loader (decode + open_clip eval transform) and
  ``backbone.encode_image`` on every batch, as a run without the cache does;
- the cache build (``ensure_cache``, reported, not part of the ratio);
- a *cached epoch*: ``open_cached(path).loader(batch, shuffle=True)`` (the path the engine
  uses: lazy h5py handles, one sorted read per batch), median of several epochs; and the same
  with ``in_memory=True``.

Usage: ``python benchmarks/feature_cache.py [--items-tiny N] [--items-vit N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clapkit.build import build_component
from clapkit.cache import encode_frames, ensure_cache, open_cached
from clapkit.data.base import ClipDataset, DatasetSource, ItemRef
from clapkit.interfaces import BuildContext
from clapkit.plugins import get_plugin_host
from clapkit.recipe import ComponentSpec
from clapkit.sections import NoKeys


class NoiseImages(DatasetSource):
    """``n`` random RGB images of ``size`` px (decoded in load, like files would be)."""

    classes = [f"class{i}" for i in range(10)]

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def splits(self) -> list[str]:
        return ["train"]

    def refs(self, split: str) -> list[ItemRef]:
        return [ItemRef(id=f"img{i:05d}", label=i % 10, path=f"img{i:05d}.png")
                for i in range(self.n)]

    def load(self, ref: ItemRef, train: bool, rng: random.Random) -> dict[str, list[Image.Image]]:
        seed = int.from_bytes(hashlib.sha256(ref.id.encode()).digest()[:4], "little")
        arr = np.random.default_rng(seed).integers(0, 256, (self.size, self.size, 3), np.uint8)
        return {"image": [Image.fromarray(arr)]}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "n": self.n, "size": self.size}


def _collate(items: list[dict]) -> torch.Tensor:
    return torch.stack([it["streams"]["image"] for it in items])


def encode_epoch(backbone, source: NoiseImages, batch: int) -> float:
    ds = ClipDataset(source, "train", backbone.transform(False), train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True,
                                         collate_fn=_collate)
    t0 = time.perf_counter()
    total = 0.0
    for frames in loader:
        total += float(encode_frames(backbone, frames, batch).sum())
    return time.perf_counter() - t0


def cached_epoch(path: Path, batch: int, in_memory: bool, repeats: int) -> float:
    times = []
    for r in range(repeats):
        ds = open_cached(path, in_memory=in_memory)        # load time counts for in-memory
        t0 = time.perf_counter()
        if in_memory:
            ds.load_in_memory()
        rows, total = 0, 0.0
        gen = torch.Generator().manual_seed(r)
        for b in ds.loader(batch, shuffle=True, generator=gen):
            feats = b["features"]["image"]
            rows += feats.shape[0]
            total += float(feats.sum())
        times.append(time.perf_counter() - t0)
        assert rows == len(ds)
        ds.close()
    return statistics.median(times)


def bench(model: str, n: int, batch: int, host, repeats: int) -> None:
    entry = host.registries.backbone.get("open_clip")
    spec = ComponentSpec(section="backbone", kind="backbone", plugin="open_clip", keys=NoKeys(),
                         config=entry.config_cls(model=model))
    t0 = time.perf_counter()
    backbone = build_component(spec, BuildContext(host=host))
    t_build_model = time.perf_counter() - t0
    source = NoiseImages(n, size=int(backbone.image_size * 1.15))
    with torch.no_grad():
        backbone.encode_image(torch.zeros(1, 3, backbone.image_size, backbone.image_size))
    t_encode = encode_epoch(backbone, source, batch)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = ensure_cache(backbone, source, "train", cache_dir=tmp, batch_size=batch,
                            progress=False)
        t_cache = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        t_cached = cached_epoch(path, batch, in_memory=False, repeats=repeats)
        t_mem = cached_epoch(path, batch, in_memory=True, repeats=repeats)
    print(f"{model}: encode epoch {t_encode:.3f} s, cached epoch {t_cached:.4f} s, "
          f"speed-up {t_encode / t_cached:.1f}x, cache read {n / t_cached:,.0f} rows/s "
          f"({n} images at {backbone.image_size} px, batch {batch})")
    print(f"  {model} in-memory cache: epoch {t_mem:.4f} s ({t_encode / t_mem:.1f}x), "
          f"{n / t_mem:,.0f} rows/s; cache build {t_cache:.2f} s for {size_mb:.2f} MiB; "
          f"model build + fingerprint {t_build_model:.2f} s")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items-tiny", type=int, default=512)
    ap.add_argument("--items-vit", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    host = get_plugin_host()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    bench("clapkit-tiny", args.items_tiny, args.batch, host, args.repeats)
    bench("ViT-B-32", args.items_vit, args.batch, host, args.repeats)


if __name__ == "__main__":
    main()
