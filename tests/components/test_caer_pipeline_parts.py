"""The enhanced CLIP-CAER parts composed in the core Pipeline: one training step end to end
on the tiny open_clip model (features given directly, as from the cache)."""

import attrs
import torch
from torch import nn

from clapkit.pipeline import Pipeline
from clapkit.sections import LossKeys


def test_one_step_through_every_part(make, ctx, tiny_clip):
    torch.manual_seed(0)
    c = attrs.evolve(ctx, backbone=tiny_clip)
    d = tiny_clip.embed_dim
    desc = {"happy": ["a smiling person"], "sad": ["a person with drooping lips"],
            "angry_face": ["a person with furrowed eyebrows"], "neutral": ["a calm face"]}
    prompts = {"desc": make("prompt", "handcrafted", c, descriptions=desc),
               "soft": make("prompt", "coop", c, n_ctx=4)}
    adapters = {
        "eaa": nn.ModuleDict({"face": make("adapter", "eaa", c)}),
        "temporal": nn.ModuleDict({s: make("adapter", "temporal_transformer", c, heads=2,
                                           dim_head=8) for s in c.streams}),
        "fusion": make("adapter", "concat_linear", c)}
    places = {"eaa": "image", "temporal": "video", "fusion": "fusion"}
    losses = {"cls": make("loss", "label_smoothing", c, eps=0.05),
              "mi": make("loss", "mi", c), "dc": make("loss", "dc", c, view="soft"),
              "moco": make("loss", "moco_rank", c, queue_size=16, view="soft",
                               keys="momentum")}
    pipe = Pipeline(backbone=tiny_clip, prompts=prompts, adapters=adapters,
                    adapter_places=places,
                    head=make("head", "iec", c, lambda_slerp=0.3, temperature=0.07,
                              desc_view="desc"),
                    head_view="soft", losses=losses,
                    loss_keys={n: LossKeys() for n in losses}, streams=c.streams,
                    task_of_class=[0] * 4)
    assert all(n in pipe.available_outputs() or n.startswith("views.")
               for loss in losses.values() for n in loss.needs)
    for loss in losses.values():
        loss.bind(pipe)
    pipe.train()
    feats = {s: torch.randn(3, c.num_frames, d) for s in c.streams}
    batch = {"features": feats, "label": torch.tensor([0, 2, 3]), "epoch": 0}
    out = pipe(batch)
    assert out["logits"].shape == (3, 4) and set(out["views"]) == {"desc", "soft"}
    total, terms = pipe.compute_losses(out, batch, epoch=0)
    assert set(terms) == {"cls", "mi", "dc", "moco", "total"}
    assert torch.isfinite(total)
    total.backward()
    assert prompts["soft"].ctx.grad is not None
    assert adapters["fusion"].proj.weight.grad is not None
    assert adapters["eaa"]["face"].up.weight.grad is not None
    assert all(p.grad is None for p in tiny_clip.parameters())
    assert int(losses["moco"].queue_ptr) == 3
    # the momentum copy is saved with the model, under the loss's key, as buffers only
    state = pipe.state_dict()
    assert any(k.startswith("losses.moco.momentum_encoder.") for k in state)
    names = {n for n, _ in pipe.named_parameters()}
    assert not any(n.startswith("losses.") for n in names)
    assert not any(n.startswith("prompts.soft.backbone") for n in state)
