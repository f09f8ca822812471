"""cocoop: contract suite, equivalence with open_clip (zero meta-net), the meta-net's shape and
per-image effect, learning on demo data -- on both tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clapkit.errors import ClapkitError
from clapkit.interfaces import ImageInputs
from clapkit.testing import PromptContract
from clapkit_plugins.prompts.cocoop import CoCoOpConfig, build
from prompt_fixtures import DEMO_CLASSES, MODELS, backbone, context, demo_images, train_steps


class TestCoCoOpContract(PromptContract):
    components = ["cocoop"]


def _inputs(bb, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(b, bb.embed_dim, generator=g)
    return ImageInputs(z=torch.randn(b, bb.embed_dim, generator=g), raw={"image": raw})


@pytest.mark.parametrize("model", MODELS)
def test_zero_meta_net_equals_open_clip_encode_text(model):
    bb = backbone(model)
    p = build(CoCoOpConfig(init="a photo of a"), context(model))
    with torch.no_grad():
        p.meta_net[2].weight.zero_()
        p.meta_net[2].bias.zero_()
        got = p(_inputs(bb)).text
        want = bb.model.encode_text(bb.tokenize([f"a photo of a {c}." for c in DEMO_CLASSES]))
    assert got.shape == (3, len(DEMO_CLASSES), bb.embed_dim)
    assert (got - want.unsqueeze(0)).abs().max().item() < 1e-5


@pytest.mark.parametrize("model", MODELS)
def test_meta_net_shapes_and_per_image_bias(model):
    bb = backbone(model)
    p = build(CoCoOpConfig(), context(model))
    hidden = bb.embed_dim // 16
    assert [tuple(m.weight.shape) for m in (p.meta_net[0], p.meta_net[2])] == \
        [(hidden, bb.embed_dim), (bb.text_width, hidden)]
    assert isinstance(p.meta_net[1], torch.nn.ReLU)
    image = _inputs(bb, b=2)
    ctx = p.context(image)
    f = F.normalize(image.raw_mean, dim=-1)
    torch.testing.assert_close(ctx, p.ctx.unsqueeze(0) + p.meta_net(f).unsqueeze(1))
    with torch.no_grad():
        text = p(image).text
    assert not torch.allclose(text[0], text[1])           # conditioned on the image
    # condition = "z" reads the adapted feature instead of the raw one
    pz = build(CoCoOpConfig(condition="z"), context(model))
    pz.load_state_dict(p.state_dict())
    torch.testing.assert_close(pz.context(image),
                               p.ctx.unsqueeze(0) + p.meta_net(F.normalize(image.z, dim=-1))
                               .unsqueeze(1))


def test_errors_are_clear():
    with pytest.raises(ClapkitError, match="conditioned on the image features"):
        build(CoCoOpConfig(), context(MODELS[0]))(None)
    with pytest.raises(ClapkitError, match=r"n_ctx = 3 but init 'a photo of a' has 4 tokens"):
        build(CoCoOpConfig(n_ctx=3), context(MODELS[0]))
    with pytest.raises(ClapkitError, match="names: 'nope' is not a class"):
        build(CoCoOpConfig(names={"nope": "x"}), context(MODELS[0]))


@pytest.mark.parametrize("model", MODELS)
def test_cocoop_learns_on_demo_images(model, tmp_path_factory):
    images, labels = demo_images(model, str(tmp_path_factory.mktemp("demo")))
    p = build(CoCoOpConfig(n_ctx=4, init=""), context(model))
    losses, acc = train_steps(p, backbone(model), images, labels, steps=25)
    assert losses[-1] < losses[0] - 0.3, losses
    assert acc > 0.45, acc                         # 4 classes: chance is 0.25
