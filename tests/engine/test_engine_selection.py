"""Model selection and the image encoder: best/* all from the selected epoch, final figures
at best.pt; a prompt that changes the image encoder keeps the frozen CLIP in eval mode and is
announced once per stage."""

from __future__ import annotations

import json
import logging

import torch

import engine_standins as es
from clapkit.engine import checkpoint as ckpt
from clapkit.engine.best import BestTracker
from clapkit.engine.runner import run_recipe

LOGGED = es.BASE_RECIPE + '\n[log.jsonl]\nplugin = "jsonl"\n'


def test_best_figures_come_from_one_epoch():
    b = BestTracker()
    assert b.update({"train/war": 0.6, "train/uar": 0.5, "valid/war": 0.5, "valid/uar": 0.5})
    assert not b.update({"train/war": 0.9, "train/uar": 0.9, "valid/war": 0.7,
                         "valid/uar": 0.4})                 # better train, worse selection
    assert not b.update({"train/war": 1.0, "train/uar": 1.0})     # no valid evaluation
    assert b.metrics() == {"best/train_war": 0.6, "best/train_uar": 0.5,
                           "best/valid_war": 0.5, "best/valid_uar": 0.5}
    assert b.update({"train/war": 0.1, "train/uar": 0.1, "valid/war": 0.2, "valid/uar": 0.55})
    assert b.metrics()["best/train_war"] == 0.1


def test_final_figures_are_those_of_the_best_checkpoint(tmp_path):
    # -2 CE from epoch 2 of a stage (warmup restarts per stage): the 2-epoch first stage
    # learns, the 4-epoch second stage learns, then un-learns -- the last epoch is worse
    text = es.BASE_RECIPE.replace('[[stages]]\nname = "prompt"',
                                  '[losses.anti]\nplugin = "t_neg_ce"\nweight = 2.0\n'
                                  'warmup = 2\n\n[[stages]]\nname = "prompt"')
    text = text.replace('name = "adapter"\ntrain = ["adapters.*"]\nepochs = 2\nlr = 0.01',
                        'name = "adapter"\ntrain = ["prompts.*"]\nepochs = 4\nlr = 0.5')
    path = es.write_recipe(tmp_path, text + '\n[log.jsonl]\nplugin = "jsonl"\n')
    over = es.base_overrides(tmp_path) + ['data.splits=["train", "valid", "test"]',
                                          'data.test_split="test"']
    s = run_recipe(path, overrides=over, out_dir=tmp_path / "o")
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["metrics"] for r in rows if r["event"] == "epoch_end"]
    assert epochs[-1]["valid/uar"] < s["best/valid_uar"]          # the case that matters
    assert s["final/checkpoint"] == "best"
    assert s["final/valid_uar"] == s["best/valid_uar"]
    assert s["final/valid_war"] == s["best/valid_war"]
    best = ckpt.load(tmp_path / "o" / "checkpoints" / "best.pt")
    assert best["metrics"]["train/war"] == s["best/train_war"]
    assert best["metrics"]["valid/uar"] == s["best/valid_uar"]
    assert "final/test_war" in s and "final/test_uar" in s


def test_a_prompt_that_changes_the_encoder_keeps_clip_in_eval_and_says_so(tmp_path, caplog,
                                                                           monkeypatch):
    modes = []
    from clapkit_plugins.backbones.open_clip import OpenClipBackbone
    orig = OpenClipBackbone.encode_image_prompted

    def spy(self, images, deep_prompts):
        modes.append((self.training, torch.is_grad_enabled()))
        return orig(self, images, deep_prompts)
    monkeypatch.setattr(OpenClipBackbone, "encode_image_prompted", spy)
    text = es.BASE_RECIPE.replace('plugin = "t_residual"', 'plugin = "t_deep"')
    text = text.replace("epochs = 2", "epochs = 1")
    path = es.write_recipe(tmp_path, text)
    over = es.base_overrides(tmp_path) + ["data.train_counts=[2, 2, 2, 2]",
                                          "data.valid_counts=[1, 1, 1, 1]"]
    with caplog.at_level(logging.WARNING, logger="clapkit.engine"):
        run_recipe(path, overrides=over, out_dir=tmp_path / "o")
    said = [r.getMessage() for r in caplog.records if "changes the image encoder" in r.message]
    assert len(said) == 2                                  # once per stage, not per epoch
    assert "stage 'prompt'" in said[0] and "prompt 'text'" in said[0]
    train_calls = [m for m in modes if m[1]]
    assert train_calls and not any(training for training, _ in train_calls)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.h5"))


def test_best_checkpoint_keeps_the_backbone_a_later_stage_trains(tmp_path):
    # stage 1 (prompt) reaches 100 % valid UAR, so the selected epoch is before stage 2
    # trains a backbone tensor: best.pt must hold the backbone as it was then
    text = es.BASE_RECIPE.replace(
        'name = "adapter"\ntrain = ["adapters.*"]\nepochs = 2\nlr = 0.01',
        'name = "adapter"\ntrain = ["backbone.model.visual.proj"]\nepochs = 1\nlr = 0.5')
    path = es.write_recipe(tmp_path, text)
    s = run_recipe(path, overrides=es.base_overrides(tmp_path) + [
        "data.train_counts=[3, 3, 3, 3]", "data.valid_counts=[2, 2, 2, 2]"],
        out_dir=tmp_path / "o")
    best = ckpt.load(tmp_path / "o" / "checkpoints" / "best.pt")
    last = ckpt.load(tmp_path / "o" / "checkpoints" / "last.pt")
    assert best["position"]["stage"] == 0 and s["best/valid_uar"] == 1.0
    key = "backbone.model.visual.proj"
    from clapkit.build import build_component
    from clapkit.interfaces import BuildContext
    from clapkit.plugins import get_plugin_host
    from clapkit.recipe import load_recipe
    host = get_plugin_host()
    fresh = build_component(load_recipe(path, host).backbone, BuildContext(host=host))
    assert torch.equal(best["model"][key], fresh.model.visual.proj.detach())   # as selected
    assert not torch.equal(last["model"][key], best["model"][key])           # it trained
    assert s["final/checkpoint"] == "best" and s["final/valid_uar"] == 1.0
