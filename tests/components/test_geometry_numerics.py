"""slerp against a float64 reference over the whole angle range (near 0 and near pi in
float32), finite gradients everywhere, and cosine logits on batch-broadcast text views."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clapkit.geometry import cosine_logits, slerp


def _pairs(angles: torch.Tensor, dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """float32 unit pairs (a, b) at the given angles (built in float64, then rounded)."""
    g = torch.Generator().manual_seed(seed)
    n = len(angles)
    a = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    r = torch.randn(n, dim, generator=g, dtype=torch.float64)
    u = F.normalize(r - (r * a).sum(-1, keepdim=True) * a, dim=-1)
    th = angles.to(torch.float64).unsqueeze(-1)
    b = torch.cos(th) * a + torch.sin(th) * u
    return a.float(), b.float()


def _reference(a32: torch.Tensor, b32: torch.Tensor, t: float) -> torch.Tensor:
    """Textbook slerp in float64 of the float32 inputs (angle via atan2, accurate)."""
    a, b = F.normalize(a32.double(), dim=-1), F.normalize(b32.double(), dim=-1)
    th = 2 * torch.atan2((a - b).norm(dim=-1, keepdim=True), (a + b).norm(dim=-1, keepdim=True))
    return (torch.sin((1 - t) * th) * a + torch.sin(t * th) * b) / torch.sin(th)


ANGLES = torch.cat([torch.logspace(-6, -1, 20, dtype=torch.float64),
                    torch.linspace(0.1, math.pi - 0.1, 40, dtype=torch.float64),
                    math.pi - torch.logspace(-1, -5, 30, dtype=torch.float64)])


@pytest.mark.parametrize("t", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_slerp_float32_matches_float64_over_the_whole_angle_range(t):
    a, b = _pairs(ANGLES)
    out = slerp(a, b, t)
    assert out.dtype == torch.float32
    err = (out.double() - _reference(a, b, t)).abs().max(dim=-1).values
    worst = int(err.argmax())
    assert float(err.max()) < 2e-5, f"error {float(err.max()):.3g} at angle {float(ANGLES[worst])}"


def test_slerp_near_antiparallel_keeps_its_great_circle():
    # the review: within ~1.4e-3 rad of pi the old code fell back to lerp (error 0.35; a zero
    # vector at t = 0.5)
    a, b = _pairs(math.pi - torch.tensor([1e-2, 2e-3, 1e-3, 5e-4, 1e-4], dtype=torch.float64))
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid.norm(dim=-1), torch.ones(5))
    err = (mid.double() - _reference(a, b, 0.5)).abs().max()
    assert float(err) < 1e-4
    # the midpoint is half the angle away from a
    gaps = torch.tensor([1e-2, 2e-3, 1e-3, 5e-4, 1e-4], dtype=torch.float64)
    torch.testing.assert_close((mid.double() * a.double()).sum(-1).clamp(-1, 1).acos(),
                               (math.pi - gaps) / 2, atol=1e-4, rtol=0)


def test_exactly_antiparallel_gives_a_unit_vector_perpendicular_to_both():
    a = F.normalize(torch.randn(4, 16), dim=-1)
    for t in (0.25, 0.5, 0.75):
        out = slerp(a, -a, t)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
        # at angle t*pi from a along some great circle through -a
        torch.testing.assert_close((out * a).sum(-1), torch.full((4,), math.cos(t * math.pi)),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, 1.0, math.pi / 2, math.pi - 1e-3,
                                   math.pi])
def test_gradients_are_finite_at_every_angle(angle):
    if angle == math.pi:
        a = F.normalize(torch.randn(3, 8), dim=-1)
        b = -a.clone()
    elif angle == 0.0:
        a = F.normalize(torch.randn(3, 8), dim=-1)
        b = a.clone()
    else:
        a, b = _pairs(torch.full((3,), angle, dtype=torch.float64), dim=8)
    a.requires_grad_()
    b.requires_grad_()
    t = torch.tensor(0.3, requires_grad=True)
    slerp(a, b, t).sum().backward()
    for g in (a.grad, b.grad, t.grad):
        assert torch.isfinite(g).all()


def test_half_precision_inputs_are_computed_in_float32():
    a, b = _pairs(torch.tensor([0.5, 3.0], dtype=torch.float64))
    out = slerp(a.bfloat16(), b.bfloat16(), 0.5)
    assert out.dtype == torch.bfloat16
    ref = _reference(a.bfloat16().float(), b.bfloat16().float(), 0.5)
    assert float((out.double() - ref).abs().max()) < 1e-2


def test_cosine_logits_on_a_broadcast_text_view_equals_the_materialised_one():
    s, b, c, d = 3, 5, 4, 8
    z = torch.randn(b, d)
    text = torch.randn(s, 1, c, d).expand(s, b, c, d)     # stride 0 over the batch
    assert text.stride(1) == 0
    torch.testing.assert_close(cosine_logits(z, text), cosine_logits(z, text.contiguous()))
    t3 = torch.randn(1, c, d).expand(b, c, d)
    torch.testing.assert_close(cosine_logits(z, t3), cosine_logits(z, t3.contiguous()))
    assert cosine_logits(z, text).shape == (s, b, c)
