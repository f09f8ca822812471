"""handcrafted and coop prompts, with the fake backbone and the real tiny open_clip model."""

import attrs
import pytest
import torch
import torch.nn.functional as F

from clapkit.errors import ClapkitError


def encode(bb, texts):
    with torch.no_grad():
        return bb.encode_text(bb.tokenize(texts))


# --- handcrafted --------------------------------------------------------------------------------

def test_handcrafted_single_template(make, ctx, fake_backbone):
    p = make("prompt", "handcrafted", ctx)
    want = F.normalize(encode(fake_backbone, [f"a photo of a {c.replace('_', ' ')}."
                                              for c in ctx.class_names]), dim=-1)
    torch.testing.assert_close(p().text, want)
    assert p.sentences[2] == ["a photo of a angry face."]


def test_handcrafted_ensemble_is_mean_of_normalised_embeddings(make, ctx, fake_backbone):
    templates = ["a photo of a {}.", "a {} person.", "the face looks {}"]
    p = make("prompt", "handcrafted", ctx, templates=templates, renormalize=False)
    for c, name in enumerate(ctx.class_names):
        e = F.normalize(encode(fake_backbone, [t.format(name.replace("_", " "))
                                               for t in templates]), dim=-1)
        torch.testing.assert_close(p().text[c], e.mean(0))
    renorm = make("prompt", "handcrafted", ctx, templates=templates)
    torch.testing.assert_close(renorm().text, F.normalize(p().text, dim=-1))


def test_handcrafted_is_a_frozen_buffer(make, ctx):
    p = make("prompt", "handcrafted", ctx)
    assert list(p.parameters()) == []
    assert "features" in dict(p.named_buffers()) and "features" in p.state_dict()
    assert not p().text.requires_grad
    # computed once: the backbone changing afterwards does not move the view
    before = p().text.clone()
    with torch.no_grad():
        ctx.backbone.proj.weight.mul_(2)
    assert torch.equal(p().text, before)


def test_handcrafted_descriptions_dict_and_list(make, ctx, fake_backbone):
    desc = {"happy": ["A person smiling with raised cheeks", "A {} face"],
            "sad": "A person with drooping lip corners",
            "angry_face": ["A person with furrowed eyebrows"],
            "neutral": ["A relaxed face"]}
    p = make("prompt", "handcrafted", ctx, descriptions=desc)
    e = F.normalize(encode(fake_backbone, desc["happy"][:1] + ["A happy face"]), dim=-1).mean(0)
    torch.testing.assert_close(p().text[0], F.normalize(e, dim=0))
    aligned = make("prompt", "handcrafted", ctx, descriptions=[desc[c] for c in ctx.class_names])
    torch.testing.assert_close(aligned().text, p().text)
    both = make("prompt", "handcrafted", ctx, descriptions=desc, with_templates=True)
    assert both.sentences[1] == ["a photo of a sad.", "A person with drooping lip corners"]


def test_handcrafted_description_errors_name_the_class(make, ctx):
    with pytest.raises(ClapkitError, match="class 'neutral' has no description"):
        make("prompt", "handcrafted", ctx,
             descriptions={"happy": ["x"], "sad": ["y"], "angry_face": ["z"]})
    with pytest.raises(ClapkitError, match="'happpy' is not a class"):
        make("prompt", "handcrafted", ctx,
             descriptions={"happpy": ["x"], "sad": ["y"], "angry_face": ["z"], "neutral": ["n"]})
    with pytest.raises(ClapkitError, match="one entry per class"):
        make("prompt", "handcrafted", ctx, descriptions=[["x"], ["y"]])
    with pytest.raises(Exception, match="exactly once"):
        make("prompt", "handcrafted", ctx, templates=["no placeholder"])


# --- coop ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["fake", "tiny_clip"])
def test_coop_only_context_trains_and_gradients_cross_the_frozen_tower(
        make, ctx, backbone, request):
    bb = request.getfixturevalue("fake_backbone" if backbone == "fake" else "tiny_clip")
    c = attrs.evolve(ctx, backbone=bb)
    p = make("prompt", "coop", c, n_ctx=4)
    assert [n for n, _ in p.named_parameters()] == ["ctx"]
    assert not any(t.requires_grad for t in bb.parameters())
    out = p().text
    assert out.shape == (len(ctx.class_names), bb.embed_dim)
    out.pow(2).sum().backward()
    assert p.ctx.grad is not None and p.ctx.grad.abs().sum() > 0
    assert all(t.grad is None for t in bb.parameters())
    assert not any(k.startswith("backbone") for k in p.state_dict())


@pytest.mark.parametrize("backbone", ["fake", "tiny_clip"])
def test_coop_with_init_phrase_reproduces_the_phrase_prompt(make, ctx, backbone, request):
    """ctx initialised from "a photo of a" at position end == encoding "a photo of a {name}."."""
    bb = request.getfixturevalue("fake_backbone" if backbone == "fake" else "tiny_clip")
    c = attrs.evolve(ctx, backbone=bb)
    p = make("prompt", "coop", c, init="a photo of a")
    assert p.n_ctx == 4 and p.ctx.shape[0] == 4
    with torch.no_grad():
        got = p().text
    want = encode(bb, [f"a photo of a {n.replace('_', ' ')}." for n in ctx.class_names])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["front", "middle"])
def test_coop_positions_place_the_name(make, ctx, fake_backbone, position):
    phrase = {"front": "{} a photo of a.", "middle": "a photo {} of a."}[position]
    p = make("prompt", "coop", ctx, init="a photo of a", position=position)
    with torch.no_grad():
        got = p().text
    want = encode(fake_backbone, [phrase.format(n.replace("_", " ")) for n in ctx.class_names])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_coop_class_specific_and_shared_shapes(make, ctx, fake_backbone, tiny_clip):
    width = fake_backbone.embedding.weight.shape[1]
    shared = make("prompt", "coop", ctx, n_ctx=3)
    csc = make("prompt", "coop", ctx, n_ctx=3, class_specific=True)
    assert shared.ctx.shape == (3, width)
    assert csc.ctx.shape == (len(ctx.class_names), 3, width)
    assert 0.005 < float(shared.ctx.detach().std()) < 0.05           # N(0, 0.02^2)
    # class-specific context of class 0 only affects class 0's feature
    before = csc().text.detach().clone()
    with torch.no_grad():
        csc.ctx[0] += 1.0
    after = csc().text.detach()
    assert not torch.allclose(after[0], before[0])
    torch.testing.assert_close(after[1:], before[1:])
    default = make("prompt", "coop", attrs.evolve(ctx, backbone=tiny_clip))
    assert default.n_ctx == 16 and default.ctx.shape == (16, 32)   # tiny text width 32


def test_coop_errors(make, ctx):
    with pytest.raises(ClapkitError, match="n_ctx = 8 but init"):
        make("prompt", "coop", ctx, n_ctx=8, init="a photo of a")
    with pytest.raises(Exception, match="position"):
        make("prompt", "coop", ctx, position="left")
    with pytest.raises(ClapkitError, match="does not fit"):
        make("prompt", "coop", ctx, n_ctx=14)               # fake context length is 16
