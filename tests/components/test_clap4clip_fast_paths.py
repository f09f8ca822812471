"""The fast paths of the CLAP4CLIP step (benchmarks/clap4clip_step.py) compute the same values
and gradients as the plain formulas they replace."""

import pytest
import torch
import torch.nn.functional as F

from clapkit.geometry import cosine_logits


def _reference_cosine(z, text):
    z, text = F.normalize(z, dim=-1), F.normalize(text, dim=-1)
    if text.dim() == 2:
        return z @ text.t()
    text = text.expand(*text.shape[:-3], z.shape[0], *text.shape[-2:])
    return torch.einsum("bd,...bcd->...bc", z, text)


@pytest.mark.parametrize("shape", [(7, 8), (5, 7, 8), (1, 7, 8), (3, 5, 7, 8), (3, 1, 7, 8),
                                   (2, 3, 1, 7, 8)])
def test_cosine_logits_values_and_gradients_match_normalise_then_dot(shape):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    text = torch.randn(*shape, dtype=torch.float64, generator=g)
    text[..., 0, :] = 0.0                               # a zero row: F.normalize's eps path
    text.requires_grad_()
    got, want = cosine_logits(z, text), _reference_cosine(z, text)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    up = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(got, (z, text), up),
                    torch.autograd.grad(want, (z, text), up)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


def test_cosine_logits_gradcheck_on_shared_samples_and_a_broadcast_view():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    samples = torch.randn(3, 1, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(cosine_logits, (z, samples))
    assert torch.autograd.gradcheck(lambda z, t: cosine_logits(z, t.expand(3, 4, 5, 6)),
                                    (z, samples))


def test_cosine_logits_float32_samples_match_the_reference():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(32, 64, generator=g)
    text = torch.randn(20, 1, 30, 64, generator=g, requires_grad=True)
    got, want = cosine_logits(z, text), _reference_cosine(z, text)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (ga,), (gb,) = (torch.autograd.grad(x.square().sum(), text) for x in (got, want))
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tasks", [[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2], [1, 0, 1, 0, 2, 2]])
def test_tasks_linear_equals_a_per_class_linear(tasks):
    from clapkit_plugins.adapters.variational import tasks_linear
    g = torch.Generator().manual_seed(3)
    t = torch.tensor(tasks)
    w = torch.randn(3, 5, 4, dtype=torch.float64, generator=g)
    b = torch.randn(3, 5, dtype=torch.float64, generator=g)
    x = torch.randn(2, len(tasks), 4, dtype=torch.float64, generator=g, requires_grad=True)
    got = tasks_linear(x, t, w, b)
    want = torch.stack([x[:, i] @ w[k].t() + b[k] for i, k in enumerate(tasks)], dim=1)
    torch.testing.assert_close(got, want)
    up = torch.randn(want.shape, dtype=torch.float64, generator=g)
    torch.testing.assert_close(torch.autograd.grad(got, x, up)[0],
                               torch.autograd.grad(want, x, up)[0])


def test_reparameterised_samples_have_addcmul_values_and_gradients():
    from clapkit_plugins.adapters.variational import _Reparameterised
    g = torch.Generator().manual_seed(4)
    loc = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    scale = torch.rand(2, 3, 4, dtype=torch.float64, generator=g).add(0.1).requires_grad_()
    xi = torch.randn(5, 2, 3, 4, dtype=torch.float64, generator=g)
    got, want = _Reparameterised.apply(loc, scale, xi), torch.addcmul(loc, scale, xi)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda a, s: _Reparameterised.apply(a, s, xi), (loc, scale))


@pytest.mark.parametrize("layers,heads,batch", [(1, 1, 1), (2, 2, 3)])
def test_vga_decoder_forward_equals_the_module_call_with_gradients(layers, heads, batch):
    """The written-out decoder (shared first in-projection, per-block rows) computes what
    nn.TransformerDecoder computes on the expanded queries, values and gradients."""
    from clapkit_plugins.adapters.vga import decoder_forward, task_block_mask
    torch.manual_seed(5)
    dec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(
        8, heads, 16, 0.0, activation="gelu", batch_first=True), layers).double().train()
    text = torch.randn(6, 8, dtype=torch.float64)
    tok = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    mem = torch.randn(batch, 4, 8, dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    mask = task_block_mask(ids)
    got = decoder_forward(dec, [text, tok], batch, mem, ~mask)
    want = dec(torch.cat([text, tok]).expand(batch, 8, 8), mem, tgt_mask=mask)
    torch.testing.assert_close(got, want)
    params = [tok, *dec.parameters()]
    up = torch.randn(want.shape, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, params, up), torch.autograd.grad(want, params, up)):
        torch.testing.assert_close(a, b)
