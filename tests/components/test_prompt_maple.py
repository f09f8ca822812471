"""maple: contract suite, equivalence with open_clip's own encoders, coupling, depth errors,
learning on demo data -- on the tiny model and on one whose text tower is wider than its
vision tower (and of another depth)."""

from __future__ import annotations

import pytest
import torch

from clapkit.errors import ClapkitError
from clapkit.testing import PromptContract
from clapkit_plugins.prompts.maple import MapleConfig, build

from prompt_fixtures import DEMO_CLASSES, MODELS, backbone, context, demo_images, train_steps


class TestMapleContract(PromptContract):
    components = ["maple"]


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model", MODELS)
def test_neutral_maple_equals_open_clip_encoders(model):
    """depth 1, prompts = the tokens they replace ("a photo"): text == encode_text of the
    plain sentence; no vision prompts: encode_image_prompted == encode_image."""
    bb = backbone(model)
    p = build(MapleConfig(depth=1, ctx_init="a photo of a"), context(model))
    with torch.no_grad():
        got = p().text
        want = bb.model.encode_text(bb.tokenize([f"a photo of a {c}." for c in DEMO_CLASSES]))
        x = _images()
        assert (bb.encode_image_prompted(x, []) - bb.model.encode_image(x)).abs().max() < 1e-5
    assert got.shape == (len(DEMO_CLASSES), bb.embed_dim)
    assert (got - want).abs().max().item() < 1e-5


def _reference_vision(bb, imgs, deep):
    """MaPLe's prompted vision loop written out against open_clip's VisionTransformer."""
    v = bb.model.visual
    x = v.conv1(imgs).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    n = deep[0].shape[0]
    x = v.ln_pre(torch.cat([x, deep[0].expand(x.shape[0], -1, -1)], 1))
    for j, blk in enumerate(v.transformer.resblocks):
        if 1 <= j < len(deep):
            x = torch.cat([x[:, :-n], deep[j].expand(x.shape[0], -1, -1)], 1)
        x = blk(x)
    return v.ln_post(x[:, 0]) @ v.proj


@pytest.mark.parametrize("model", MODELS)
def test_vision_prompts_are_coupled_per_layer_and_match_a_reference_loop(model):
    bb = backbone(model)
    depth = min(bb.text_layers, bb.vision_layers)
    p = build(MapleConfig(depth=depth), context(model))
    tp, vp = p.text_prompts(), p.vision_prompts()
    assert len(tp) == len(vp) == depth
    for j in range(depth):
        assert tp[j].shape == (2, bb.text_width) and vp[j].shape == (2, bb.vision_width)
        torch.testing.assert_close(vp[j], p.proj[j](tp[j]))
    x = _images(2)
    with torch.no_grad():
        got = bb.encode_image_prompted(x, vp)
        ref = _reference_vision(bb, x, [v.detach() for v in vp])
    assert (got - ref).abs().max().item() < 1e-5
    assert (got - bb.encode_image(x)).abs().max().item() > 1e-4   # the prompts act
    # aux publishes what the image tower receives
    torch.testing.assert_close(p().aux["vision_prompts"], torch.stack(vp))


def test_only_prompts_train_backbone_stays_frozen():
    bb = backbone(MODELS[1])
    p = build(MapleConfig(depth=2), context(MODELS[1]))
    out = p().text.sum() + bb.encode_image_prompted(_images(2), p.vision_prompts()).sum()
    out.backward()
    names = {n for n, _ in p.named_parameters()}
    assert names == {"ctx", "deep_text.0", "proj.0.weight", "proj.0.bias",
                     "proj.1.weight", "proj.1.bias"}
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in p.parameters())
    assert all(q.grad is None for q in bb.parameters())
    assert type(p).changes_image_encoder is True


def test_depth_and_init_errors_name_the_limits():
    with pytest.raises(ClapkitError, match=r"depth = 9 but model 'clapkit-tiny-textwide' has "
                                           r"2 text and 3 vision blocks; depth must be 1..2"):
        build(MapleConfig(depth=9), context(MODELS[1]))
    with pytest.raises(ClapkitError, match=r"n_ctx = 5 but ctx_init 'a photo of a' has only 4"):
        build(MapleConfig(n_ctx=5, depth=1), context(MODELS[0]))
    with pytest.raises(ValueError):
        MapleConfig(depth=0)
    random = build(MapleConfig(n_ctx=3, depth=2, ctx_init=""), context(MODELS[0]))
    assert random.ctx.shape == (3, backbone(MODELS[0]).text_width)


@pytest.mark.parametrize("model", MODELS)
def test_maple_learns_on_demo_images(model, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    images, labels = demo_images(model, root)
    bb = backbone(model)
    p = build(MapleConfig(depth=2), context(model))
    losses, acc = train_steps(p, bb, images, labels, steps=25)
    assert losses[-1] < losses[0] - 0.3, losses
    assert acc > 0.45, acc                         # 4 classes: chance is 0.25
