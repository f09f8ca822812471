"""The vision tower runs once per step when ITM / the caption LM read patch tokens: the
pipeline keeps the token output of the pass that gives ``z`` (``image_tokens``), and the
losses equal those computed with a second pass."""

from __future__ import annotations

import torch

from clapkit.interfaces import BuildContext
from clapkit.pipeline import Pipeline
from clapkit.sections import LossKeys
from clapkit_plugins.losses import _image_text_batch as itb


def _pipe(make, bb):
    ctx = BuildContext(backbone=bb, class_names=["a", "b"], task_of_class=[0, 0],
                       streams=("image",), num_frames=1, seed=0)
    losses = {"itm": make("loss", "itm", ctx, image_tokens="patches"),
              "lm": make("loss", "caption_lm", ctx, share_with="itm")}
    pipe = Pipeline(backbone=bb, prompts={"text": make("prompt", "handcrafted", ctx)},
                    adapters={}, adapter_places={}, head=None, head_view="text", losses=losses, loss_keys={n: LossKeys() for n in losses},
                    streams=("image",), task_of_class=[0, 0])
    for loss in losses.values():
        loss.bind(pipe)
    return pipe


def test_one_vision_pass_and_the_same_losses(make, tiny_clip, monkeypatch):
    pipe = _pipe(make, tiny_clip)
    assert "image_tokens" in pipe.losses["itm"].needs
    assert "image_tokens" in pipe.available_outputs() and pipe.wants_image_tokens()
    calls = []
    hook = tiny_clip.model.visual.register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(0)
    pixels = torch.randn(4, 1, 3, tiny_clip.image_size, tiny_clip.image_size)
    batch = {"streams": {"image": pixels}, "label": torch.tensor([0, 1, 0, 1]),
             "texts": [["a red circle"], ["a blue star"], ["a small cross"], ["a square"]],
             "group": ["0", "1", "2", "3"], "index": torch.arange(4), "epoch": 0}
    try:
        out = pipe(dict(batch))
        kept = out["image_tokens"]["image"]
        assert kept.dim() == 3 and kept.shape[0] == 4
        step = dict(batch)                            # one step's batch, shared by the losses
        one = {n: float(loss(out, step).detach()) for n, loss in pipe.losses.items()}
        assert len(calls) == 1                       # z and both losses' tokens: one pass
        two_pass = dict(out, image_tokens=None)       # the losses encode the pixels again
        step = dict(batch)
        again = {n: float(loss(two_pass, step).detach()) for n, loss in pipe.losses.items()}
        assert len(calls) == 2
    finally:
        hook.remove()
    for n in one:
        assert abs(one[n] - again[n]) < 1e-5, (n, one[n], again[n])


def test_features_source_needs_no_tokens(make, tiny_clip):
    ctx = BuildContext(backbone=tiny_clip, class_names=["a"], task_of_class=[0],
                       streams=("image",), num_frames=1, seed=0)
    itm = make("loss", "itm", ctx, image_tokens="features")
    assert itm.needs == ("z", "features")
    assert itb.patch_tokens_need(tiny_clip, "features") == ()
