"""Prompt features derived from the text tower never go stale: ``refresh`` re-encodes them,
and the engine knows when a stage trains the text tower."""

from __future__ import annotations

import copy

import attrs
import torch

from clapkit.engine.stage_runner import losses_read_text, text_tower_trains
from clapkit_plugins.prompts.handcrafted import encode_sentences


def test_handcrafted_refresh_follows_the_text_tower(make, ctx, tiny_clip):
    bb = copy.deepcopy(tiny_clip)
    c = attrs.evolve(ctx, backbone=bb)
    p = make("prompt", "handcrafted", c, templates=["a photo of {}.", "a {} face."])
    before = p().text.clone()
    with torch.no_grad():
        bb.model.token_embedding.weight.add_(torch.randn_like(bb.model.token_embedding.weight))
    assert torch.equal(p().text, before)                      # computed once at build
    p.refresh()
    after = p().text
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, encode_sentences(bb, p.sentences))
    assert "features" in p.state_dict()                       # still a checkpointed buffer


def test_text_tower_probe_tells_text_from_vision_parameters(tiny_clip):
    bb = copy.deepcopy(tiny_clip)
    named = {f"backbone.{n}": q for n, q in bb.named_parameters()}
    vision = {n: q for n, q in named.items() if ".visual." in n}
    text = {n: q for n, q in named.items() if "token_embedding" in n}
    for q in named.values():
        q.requires_grad_(True)
    assert vision and text
    assert not text_tower_trains(bb, vision)
    assert text_tower_trains(bb, text)
    assert not text_tower_trains(bb, {})


def test_coop_refresh_rereads_the_class_name_embeddings(make, ctx, tiny_clip):
    bb = copy.deepcopy(tiny_clip)
    c = attrs.evolve(ctx, backbone=bb)
    p = make("prompt", "coop", c, n_ctx=2)
    before = p().text.detach().clone()
    with torch.no_grad():
        bb.model.token_embedding.weight.add_(torch.randn_like(bb.model.token_embedding.weight))
    p.refresh()
    torch.testing.assert_close(p.embedded, bb.token_embedding(p.tokens).float())
    assert not torch.allclose(p().text.detach(), before)


def test_prompts_refresh_every_step_only_when_a_loss_reads_text(make, ctx):
    """Image-text objectives encode their own captions: with only them, a trained text tower
    refreshes the prompts once per epoch (before the evaluation), not at every step."""
    class Pipe:
        def __init__(self, losses):
            self.losses = losses

        def stage_losses(self):
            return list(self.losses.items())
    image_side = {"itc": type("L", (), {"needs": ("z",)})(),
                  "itm": type("L", (), {"needs": ("z", "features")})()}
    assert not losses_read_text(Pipe(image_side))
    for needs in (("logits",), ("z", "views.text"), ("aux.variational.mean",), ("text",)):
        assert losses_read_text(Pipe({**image_side, "x": type("L", (), {"needs": needs})()}))
    assert losses_read_text(Pipe({"ce": make("loss", "cross_entropy", ctx)}))
