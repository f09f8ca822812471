"""slerp on the unit sphere, the IEC head (lambda 0 == cosine head) and the linear probe."""

import math

import pytest
import torch
import torch.nn.functional as F

from clapkit.geometry import cosine_logits, slerp
from clapkit.interfaces import BuildContext


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_slerp(a, b, t):
    """Textbook slerp of two unit vectors, one pair at a time."""
    omega = math.acos(float((a * b).sum().clamp(-1, 1)))
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def test_slerp_endpoints_and_unit_norm():
    a, b = unit(5, 16, seed=1) * 3.0, unit(5, 16, seed=2) * 0.5    # un-normalised inputs
    assert torch.equal(slerp(a, b, 0.0), F.normalize(a, dim=-1))
    torch.testing.assert_close(slerp(a, b, 1.0), F.normalize(b, dim=-1), atol=1e-6, rtol=0)
    for t in (0.1, 0.5, 0.9):
        torch.testing.assert_close(slerp(a, b, t).norm(dim=-1), torch.ones(5))


def test_slerp_matches_textbook_formula_and_constant_speed():
    a, b = unit(16, seed=3), unit(16, seed=4)
    for t in (0.25, 0.5, 0.8):
        torch.testing.assert_close(slerp(a, b, t), reference_slerp(a, b, t), atol=1e-6, rtol=0)
    omega = torch.acos((a * b).sum())
    # angle from a grows linearly in t (what makes it *spherical* interpolation)
    ang = torch.acos((slerp(a, b, 0.3) * a).sum().clamp(-1, 1))
    torch.testing.assert_close(ang, 0.3 * omega, atol=1e-5, rtol=0)


def test_slerp_near_parallel_is_stable_with_finite_gradients():
    a = unit(16, seed=5)
    b = (a + 1e-8 * unit(16, seed=6)).requires_grad_()
    out = slerp(a, b, 0.5)
    torch.testing.assert_close(out, a, atol=1e-6, rtol=0)
    out.sum().backward()
    assert torch.isfinite(b.grad).all()
    same = slerp(a, a.clone(), 0.7)        # identical directions: no 0/0
    assert torch.isfinite(same).all()
    torch.testing.assert_close(same, a, atol=1e-6, rtol=0)


def test_slerp_broadcasts():
    text, z = unit(4, 8, seed=7), unit(3, 8, seed=8)
    mixed = slerp(text.unsqueeze(0), z.unsqueeze(1), 0.5)
    assert mixed.shape == (3, 4, 8)
    torch.testing.assert_close(mixed[2, 1], reference_slerp(text[1], z[2], 0.5), atol=1e-6,
                               rtol=0)


# --- heads -------------------------------------------------------------------------------------

@pytest.fixture
def head_ctx():
    return BuildContext(class_names=["a", "b", "c", "d", "e"])


def test_iec_lambda_zero_is_exactly_the_cosine_head(make, head_ctx):
    z, text = torch.randn(6, 16), torch.randn(5, 16)
    cos = make("head", "cosine", head_ctx, temperature=0.07)
    iec = make("head", "iec", head_ctx, temperature=0.07, lambda_slerp=0.0)
    assert torch.equal(iec(z, text, {}).logits, cos(z, text).logits)
    # with an anchor view, lambda 0 is the cosine head on that view
    iec_desc = make("head", "iec", head_ctx, temperature=0.07, lambda_slerp=0.0, desc_view="desc")
    desc = torch.randn(5, 16)
    assert torch.equal(iec_desc(z, text, {"desc": desc}).logits, cos(z, desc).logits)


def test_iec_logits_follow_the_formula(make, head_ctx):
    z, desc, soft = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5, 8)
    lam, temp = 0.3, 0.05
    iec = make("head", "iec", head_ctx, temperature=temp, lambda_slerp=lam, desc_view="desc")
    got = iec(z, soft, {"desc": desc, "soft": soft}).logits
    zn, dn = F.normalize(z, dim=-1), F.normalize(desc, dim=-1)
    want = torch.tensor([[float(zn[b] @ reference_slerp(dn[k], zn[b], lam)) / temp
                          for k in range(5)] for b in range(3)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    # lambda 1: every prototype is z itself -> all logits equal 1/T
    full = make("head", "iec", head_ctx, temperature=temp, lambda_slerp=1.0)(z, soft, {})
    torch.testing.assert_close(full.logits, torch.full((3, 5), 1 / temp), atol=1e-3, rtol=0)
    # text_weight blends the head view's cosine logits in
    w = 0.25
    blended = make("head", "iec", head_ctx, temperature=temp, lambda_slerp=lam,
                   desc_view="desc", text_weight=w)(z, soft, {"desc": desc}).logits
    want_b = (1 - w) * want + w * cosine_logits(z, soft) / temp
    torch.testing.assert_close(blended, want_b, atol=1e-4, rtol=1e-5)


def test_iec_monte_carlo_text_and_missing_view(make, head_ctx):
    iec = make("head", "iec", head_ctx, lambda_slerp=0.5, temperature=0.1)
    text = torch.randn(4, 3, 5, 8)
    out = iec(torch.randn(3, 8), text, {})
    assert out.sample_logits.shape == (4, 3, 5)
    torch.testing.assert_close(out.logits, out.sample_logits.mean(0))
    bad = make("head", "iec", head_ctx, desc_view="desc")
    with pytest.raises(Exception, match="desc_view 'desc'"):
        bad(torch.randn(3, 8), torch.randn(5, 8), {"soft": torch.randn(5, 8)})


def test_iec_config_rejects_lambda_outside_unit_interval(make, head_ctx):
    with pytest.raises(Exception, match="lambda_slerp"):
        make("head", "iec", head_ctx, lambda_slerp=1.5)


def test_linear_probe_learns_a_separable_problem(make, ctx):
    head = make("head", "linear", ctx)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, ctx.embed_dim, generator=g) * 3
    y = torch.arange(64) % 4
    z = centers[y] + 0.3 * torch.randn(64, ctx.embed_dim, generator=g)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(head(z).logits, y).backward()
        opt.step()
    assert (head(z).logits.argmax(1) == y).float().mean() > 0.95
    out = head(z[:3], torch.randn(2, 3, 4, ctx.embed_dim))
    assert out.sample_logits.shape == (2, 3, 4)
