"""clip_adapter, eaa, temporal_transformer, concat_linear: shapes, formulas, init behaviour."""

import pytest
import torch
import torch.nn.functional as F

from clapkit.errors import RecipeError


def frames(ctx, b=3, t=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t or ctx.num_frames, ctx.embed_dim, generator=g)


def test_clip_adapter_is_the_residual_blend(make, ctx):
    m = make("adapter", "clip_adapter", ctx, reduction=4, ratio=0.3)
    assert m.place == "image"
    x = frames(ctx)
    w1, w2 = m.fc[0].weight, m.fc[2].weight
    assert w1.shape == (ctx.embed_dim // 4, ctx.embed_dim)
    want = 0.3 * F.relu(F.relu(x @ w1.t()) @ w2.t()) + 0.7 * x
    torch.testing.assert_close(m(x), want)
    identity = make("adapter", "clip_adapter", ctx, ratio=0.0)
    assert torch.equal(identity(x), x)


def test_eaa_residual_is_identity_at_init_and_trains(make, ctx):
    m = make("adapter", "eaa", ctx)                 # residual, zero-initialised up projection
    x = frames(ctx).requires_grad_()
    out = m(x)
    assert out.shape == x.shape and torch.equal(out, x)
    out.pow(2).sum().backward()
    assert m.up.weight.grad.abs().sum() > 0, "zero-init up projection must receive gradient"


def test_eaa_reference_form_and_bottleneck_width(host, make, ctx, tiny_clip):
    m = make("adapter", "eaa", ctx, residual=False, reduction=3)
    assert m.down.out_features == ctx.embed_dim // 3
    x = frames(ctx)
    want = F.relu(F.relu(x @ m.down.weight.t()) @ m.up.weight.t())
    torch.testing.assert_close(m(x), want)
    # D = 512 -> 128 -> 512 at the default reduction (the seed's EAA)
    import attrs
    big = make("adapter", "eaa", attrs.evolve(ctx, backbone=_Dim(512)))
    assert (big.down.in_features, big.down.out_features, big.up.out_features) == (512, 128, 512)


class _Dim:
    def __init__(self, d):
        self.embed_dim = d


def test_eaa_refuses_dead_configurations(make, ctx):
    with pytest.raises(RecipeError, match="gradient"):
        make("adapter", "eaa", ctx, zero_init=True, final_act=True)
    with pytest.raises(RecipeError, match="zeros"):
        make("adapter", "eaa", ctx, residual=False, zero_init=True)


def test_temporal_transformer_shapes_order_and_limits(make, ctx):
    torch.manual_seed(0)
    m = make("adapter", "temporal_transformer", ctx, heads=2, dim_head=4, max_frames=6).eval()
    assert m.place == "video"
    x = frames(ctx, b=2, t=5)
    out = m(x)
    assert out.shape == (2, ctx.embed_dim)
    assert m(frames(ctx, b=2, t=1)).shape == (2, ctx.embed_dim)
    flipped = m(x.flip(1))
    assert not torch.allclose(out, flipped, atol=1e-5), "frame order must matter"
    # the CLS output depends on every frame
    x2 = x.clone()
    x2[:, 3] += torch.linspace(-1, 1, ctx.embed_dim)   # (a constant shift is LayerNorm-invariant)
    assert not torch.allclose(m(x2), out, atol=1e-5)
    with pytest.raises(ValueError, match="max_frames"):
        m(frames(ctx, b=2, t=7))
    with pytest.raises(ValueError, match="max_frames"):
        import attrs
        make("adapter", "temporal_transformer", attrs.evolve(ctx, num_frames=20))


def test_temporal_transformer_parameters_and_gradients(make, ctx):
    m = make("adapter", "temporal_transformer", ctx, heads=2, dim_head=4, depth=2,
             max_frames=16, mlp_ratio=2.0)
    assert m.pos_embedding.shape == (1, 17, ctx.embed_dim)
    assert len(m.blocks) == 2 and m.blocks[0].mlp[0].out_features == 2 * ctx.embed_dim
    m(frames(ctx)).sum().backward()
    assert m.cls_token.grad is not None and m.pos_embedding.grad is not None


def test_concat_linear_normalised_and_mean_init(make, ctx):
    m = make("adapter", "concat_linear", ctx)
    assert m.place == "fusion" and m.streams == ("face", "context")
    g = torch.Generator().manual_seed(1)
    zs = {s: torch.randn(4, ctx.embed_dim, generator=g) for s in ("context", "face")}
    out = m(zs)
    assert out.shape == (4, ctx.embed_dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out, F.normalize(zs["face"] + zs["context"], dim=-1))
    assert m.proj.weight.shape == (ctx.embed_dim, 2 * ctx.embed_dim)


def test_concat_linear_order_and_errors(make, ctx):
    torch.manual_seed(0)
    m = make("adapter", "concat_linear", ctx, order=["context", "face"], init="default")
    zs = {s: torch.randn(2, ctx.embed_dim) for s in ctx.streams}
    want = F.normalize(torch.cat([zs["context"], zs["face"]], -1) @ m.proj.weight.t()
                       + m.proj.bias, dim=-1)
    torch.testing.assert_close(m(zs), want)
    with pytest.raises(KeyError, match="context"):
        m({"face": zs["face"]})
    with pytest.raises(Exception, match="unknown stream 'body'"):
        make("adapter", "concat_linear", ctx, order=["face", "body"])


def test_registered_places_match_modules(host):
    places = {e.name: e.meta.get("place") for e in host.registries["adapter"]}
    assert places["eaa"] == "image" and places["clip_adapter"] == "image"
    assert places["temporal_transformer"] == "video" and places["concat_linear"] == "fusion"
