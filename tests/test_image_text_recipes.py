"""The published-settings recipes of issue 15 (section 5) resolve to what their comments say.

``blip_retrieval_coco.toml``, ``blip_retrieval_flickr.toml`` (extends it) and
``coca_caption_coco.toml`` carry the papers' hyper-parameters next to their keys; these tests
load each recipe as a run would and check those values, so the comments stay true. The
step counts the comments derive (alpha ramp = one BLIP epoch, image epochs that add up to the
reference's caption epochs, open_clip's 1000 warm-up steps) are recomputed from the data
sizes the headers state.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from clapkit.plugins import get_plugin_host
from clapkit.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# Karpathy split sizes the headers quote
COCO_TRAIN_IMAGES = 113_287          # train + restval
COCO_TRAIN_PAIRS = 566_747           # their (image, caption) pairs, BLIP's epoch
COCO_TRAIN2014_IMAGES = 82_783       # Karpathy "train" = COCO train2014
COCO_TRAIN2014_CAPTIONS = 414_113    # open_clip's train2014.csv rows
FLICKR_TRAIN_IMAGES = 29_000
FLICKR_TRAIN_PAIRS = 145_000


@pytest.fixture(scope="module")
def host():
    return get_plugin_host()


def load(host, name, overrides=()):
    return load_recipe(RECIPES / name, host, list(overrides))


def check_blip_common(r):
    """What the COCO and Flickr recipes share (BLIP's retrieval fine-tuning)."""
    assert r.backbone.plugin == "open_clip"
    assert r.backbone.config.model == "ViT-B-16" and r.backbone.config.pretrained == "openai"
    assert r.run.seed == 42 and r.run.use_amp is False
    assert r.run.select == "valid/itm_r_mean"
    assert r.cache.enabled == "off"
    assert r.data.keys.batch_size == 256 and r.data.keys.eval_batch_size == 64
    assert r.data.config.items == "image"
    assert r.head is None
    assert set(r.losses) == {"itc", "itm", "lm"}

    itc = r.losses["itc"]
    assert itc.plugin == "itc" and itc.keys.weight == 1.0
    assert itc.config.momentum_model is True and itc.config.momentum == 0.995
    assert itc.config.queue_size == 57600 and itc.config.alpha == 0.4
    assert itc.config.gather is True

    itm = r.losses["itm"]
    assert itm.plugin == "itm" and itm.keys.weight == 1.0
    assert itm.config.image_tokens == "patches"
    assert itm.config.share_self_attention is False

    lm = r.losses["lm"]
    assert lm.plugin == "caption_lm" and lm.keys.weight == 1.0
    assert lm.config.decoder == "grounded" and lm.config.share_with == "itm"
    assert lm.config.smoothing == 0.1

    (stage,) = r.stages
    assert stage.train == ["backbone.*", "losses.*"]
    assert stage.optimizer == "adamw" and stage.lr == 1e-5 and stage.weight_decay == 0.05
    assert stage.scheduler == "cosine" and stage.schedule_per == "epoch"
    assert stage.warmup_epochs == 0.0
    assert stage.epochs == 30

    ev = r.log["eval"]
    assert ev.plugin == "image_text" and ev.config.epoch_retrieval is True
    assert ev.config.splits == ["valid", "test"]
    assert ev.config.captions is True and ev.config.beams == 3
    assert ev.config.max_length == 20 and ev.config.min_length == 5
    assert ev.config.repetition_penalty == 1.0
    assert r.log["export"].plugin == "backbone_export"
    # every 5 image epochs = one BLIP epoch: evaluated 6 times, as BLIP
    assert r.run.eval_every == 5 and stage.epochs // r.run.eval_every == 6


def test_blip_retrieval_coco_holds_blips_coco_settings(host):
    r = load(host, "blip_retrieval_coco.toml")
    check_blip_common(r)
    assert r.run.name == "blip_retrieval_coco"
    assert r.data.plugin == "coco_karpathy"
    assert Path(r.data.config.root).parts[-2:] == ("data", "coco")
    assert r.data.config.annotations == "dataset_coco.json" and r.data.config.images == ""
    assert r.data.config.splits == {"train": ["train", "restval"], "valid": ["val"],
                                    "test": ["test"]}
    assert r.log["eval"].config.rerank_k == 256                       # BLIP k_test (COCO)
    # alpha ramps over one BLIP epoch: its train loader drops the last partial batch
    assert r.losses["itc"].config.alpha_ramp_steps == COCO_TRAIN_PAIRS // 256
    # 30 passes over the images ~ BLIP's 6 passes over the caption pairs (within 1 %)
    steps = r.stages[0].epochs * math.ceil(COCO_TRAIN_IMAGES / 256)
    assert abs(steps / (6 * (COCO_TRAIN_PAIRS // 256)) - 1) < 0.01


def test_blip_retrieval_flickr_extends_coco_with_flickrs_settings(host):
    r = load(host, "blip_retrieval_flickr.toml")
    check_blip_common(r)
    assert r.run.name == "blip_retrieval_flickr"
    assert r.data.plugin == "flickr30k_karpathy"
    assert Path(r.data.config.root).parts[-2:] == ("data", "flickr30k")
    assert r.data.config.annotations == "dataset_flickr30k.json"
    assert r.data.config.images == "flickr30k-images"
    assert r.data.config.splits == {"train": ["train"], "valid": ["val"], "test": ["test"]}
    assert r.log["eval"].config.rerank_k == 128                       # BLIP k_test (Flickr)
    assert r.losses["itc"].config.alpha_ramp_steps == FLICKR_TRAIN_PAIRS // 256
    steps = r.stages[0].epochs * math.ceil(FLICKR_TRAIN_IMAGES / 256)
    assert abs(steps / (6 * (FLICKR_TRAIN_PAIRS // 256)) - 1) < 0.01


def test_flickr_zero_shot_command_of_the_header_resolves(host):
    """The header's zero-shot transfer: the COCO recipe with Flickr30k data and k = 128."""
    r = load(host, "blip_retrieval_coco.toml",
             ["data.plugin=flickr30k_karpathy", "data.root=data/flickr30k",
              "log.eval.rerank_k=128"])
    assert r.data.plugin == "flickr30k_karpathy"
    assert r.data.config.images == "flickr30k-images"
    assert r.log["eval"].config.rerank_k == 128
    assert r.backbone.config.model == "ViT-B-16"


def test_coca_caption_coco_holds_open_clips_finetuning_settings(host):
    r = load(host, "coca_caption_coco.toml")
    assert r.run.name == "coca_caption_coco"
    assert r.backbone.plugin == "open_clip"
    assert r.backbone.config.model == "coca_ViT-B-32"
    assert r.backbone.config.pretrained == "laion2b_s13b_b90k"
    assert r.run.seed == 0 and r.run.select == "last"
    assert r.run.use_amp is True and r.run.amp_dtype == "bfloat16"
    assert r.cache.enabled == "off"
    assert r.data.plugin == "coco_karpathy"
    assert Path(r.data.config.root).parts[-2:] == ("data", "coco")
    assert r.data.config.splits == {"train": ["train"], "valid": ["val"], "test": ["test"]}
    assert r.data.config.items == "image"
    assert r.data.keys.batch_size == 128
    assert r.head is None

    lm, itc = r.losses["lm"], r.losses["itc"]
    assert lm.plugin == "caption_lm" and lm.config.decoder == "auto"
    assert lm.config.smoothing == 0.0 and lm.config.pad_id == 0
    assert lm.keys.weight == 1.0                      # --coca-caption-loss-weight 1
    assert itc.plugin == "itc" and itc.keys.weight == 0.0   # --coca-contrastive-loss-weight 0
    assert itc.config.momentum_model is False and itc.config.queue_size == 0
    assert itc.config.alpha == 0.0

    (stage,) = r.stages
    assert stage.train == ["backbone.*"]
    assert stage.optimizer == "adamw" and stage.lr == 1e-5 and stage.weight_decay == 0.1
    assert stage.scheduler == "cosine" and stage.schedule_per == "step"
    assert stage.warmup == "linear"
    per_epoch = math.ceil(COCO_TRAIN2014_IMAGES / 128)
    # --warmup 1000 steps, as the engine rounds warmup_epochs x steps per epoch
    assert round(stage.warmup_epochs * per_epoch) == 1000
    # 5 passes over the images = open_clip's 1 pass over the caption rows (within 1 %)
    assert abs(stage.epochs * per_epoch / (COCO_TRAIN2014_CAPTIONS / 128) - 1) < 0.01
    assert r.run.eval_every == stage.epochs           # evaluated at the end only

    ev = r.log["eval"]
    assert ev.plugin == "image_text" and ev.config.rerank_k == 0
    assert ev.config.captions is True and ev.config.beams == 3
    assert ev.config.max_length == 20 and ev.config.min_length == 5
    assert ev.config.repetition_penalty == 1.0
    assert r.log["export"].plugin == "backbone_export"


def test_coca_recipes_caption_lm_runs_cocas_own_decoder(host):
    """decoder = "auto" resolves to CoCa's multimodal decoder on a CoCa backbone (the tiny
    CoCa here, built offline) and to the grounded decoder on a plain CLIP."""
    from clapkit.config import structure
    from clapkit.interfaces import BuildContext

    lm = load(host, "coca_caption_coco.toml").losses["lm"]
    bb_entry = host.registries["backbone"].get("open_clip")
    lm_entry = host.registries["loss"].get(lm.plugin)
    kinds = {}
    for model in ("clapkit-tiny-coca", "clapkit-tiny"):
        cfg = structure(bb_entry.config_cls, {"model": model, "pretrained": ""},
                        file="<test>", key="backbone")
        backbone = bb_entry.factory(cfg, BuildContext())
        kinds[model] = lm_entry.factory(lm.config, BuildContext(backbone=backbone,
                                                                class_names=["image"])).kind
    assert kinds == {"clapkit-tiny-coca": "coca", "clapkit-tiny": "grounded"}


def test_the_coca_tag_is_one_open_clip_publishes():
    import open_clip
    assert ("coca_ViT-B-32", "laion2b_s13b_b90k") in open_clip.list_pretrained()
    assert ("ViT-B-16", "openai") in open_clip.list_pretrained()
