"""Frozen image encoder -> cached features; the encoder is never called in a cached epoch."""

from __future__ import annotations

import json

import pytest

import engine_standins as es
from clapkit.engine.runner import run_recipe
from clapkit_plugins.backbones.open_clip import OpenClipBackbone

LOGGED = es.BASE_RECIPE + '\n[log.jsonl]\nplugin = "jsonl"\n'


def _epochs(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "epoch_end"]


def _forbid_encoder(monkeypatch):
    def boom(self, images):
        raise AssertionError("encode_image called in a cached epoch")
    monkeypatch.setattr(OpenClipBackbone, "encode_image", boom)


def test_cached_epochs_never_call_the_image_encoder(tmp_path, monkeypatch):
    path = es.write_recipe(tmp_path, LOGGED)
    over = es.base_overrides(tmp_path)
    run_recipe(path, overrides=over, out_dir=tmp_path / "build")       # builds the caches
    _forbid_encoder(monkeypatch)
    summary = run_recipe(path, overrides=over, out_dir=tmp_path / "out")
    assert all(e["metrics"]["cached"] for e in _epochs(tmp_path / "out"))
    assert summary["final/valid_uar"] > 0.5
    # the same run without the cache needs the encoder: the guard above is real
    with pytest.raises(AssertionError, match="encode_image"):
        run_recipe(path, overrides=over + ['cache.enabled="off"'], out_dir=tmp_path / "off")


def test_a_stage_that_trains_the_backbone_reads_pixels(tmp_path):
    text = LOGGED.replace('name = "adapter"\ntrain = ["adapters.*"]',
                          'name = "adapter"\ntrain = ["adapters.*", "backbone.model.visual.proj"]')
    path = es.write_recipe(tmp_path, text)
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
    cached = [(e["stage"], e["metrics"]["cached"]) for e in _epochs(tmp_path / "out")]
    assert cached == [("prompt", True)] * 2 + [("adapter", False)] * 2
    from clapkit.engine import checkpoint as ckpt
    st = ckpt.load(tmp_path / "out" / "checkpoints" / "last.pt")
    assert st["backbone_trained"] and "backbone.model.visual.proj" in st["model"]
    with pytest.raises(Exception, match="cache.enabled"):
        run_recipe(path, overrides=es.base_overrides(tmp_path) + ['cache.enabled="on"'],
                   out_dir=tmp_path / "on")


def test_augmented_views_rotate_per_epoch(tmp_path, monkeypatch):
    from clapkit.cache import CachedFeatures
    served = []
    orig = CachedFeatures.set_epoch

    def spy(self, epoch):
        orig(self, epoch)
        served.append((len(self.views), self.view))
    monkeypatch.setattr(CachedFeatures, "set_epoch", spy)
    path = es.write_recipe(tmp_path)
    run_recipe(path, overrides=es.base_overrides(tmp_path) + ["cache.views=3"],
               out_dir=tmp_path / "out")
    train = [v for n, v in served if n == 3]
    assert train[-4:] == [0, 1, 2, 0]        # global epochs 0..3 of the run: view e % 3
    assert len(list((tmp_path / "cache").glob("train-*-train-v*.h5"))) == 3
