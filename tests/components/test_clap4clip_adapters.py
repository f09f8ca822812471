"""CLAP4CLIP text adapters: vga, task_tokens, variational (issue 11)."""

import attrs
import pytest
import torch
import torch.nn.functional as F

from clapkit.errors import ClapkitError
from clapkit.interfaces import StepContext

D = 12
TOC = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])          # 8 classes in 3 tasks (ragged)


def _step(task=2, seen=8, s=4, **kw):
    return StepContext(task=task, seen_classes=seen, num_samples=s, task_of_class=TOC, **kw)


def _grow(mods, tasks=3):
    for t in range(tasks):
        seen = int((TOC <= t).sum())
        for m in mods:
            m.on_task_start(t, seen)


@pytest.fixture
def parts(make, ctx):
    torch.manual_seed(0)
    tt = make("adapter", "task_tokens", ctx)
    vga = make("adapter", "vga", ctx, ff_dim=32)
    var = make("adapter", "variational", ctx)
    _grow([tt, vga, var])
    return tt.eval(), vga.eval(), var.eval()


def _vga_chain(tt, vga, text, z, step):
    out = tt(text, z, step)
    return vga(out.text, z, attrs.evolve(step, queries=out.queries)).text


# -- vga ----------------------------------------------------------------------------------

def test_vga_per_sample_prediction_does_not_depend_on_the_batch(parts):
    tt, vga, _ = parts
    text, z = torch.randn(8, D), torch.randn(5, D)
    full = _vga_chain(tt, vga, text, z, _step())
    alone = _vga_chain(tt, vga, text, z[2:3], _step())
    other = z.clone()
    other[[0, 1, 3, 4]] = torch.randn(4, D)
    changed = _vga_chain(tt, vga, text, other, _step())
    assert full.shape == (5, 8, D)
    torch.testing.assert_close(full[2], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full[2], changed[2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[0], full[1])            # each image conditions its text


def test_vga_per_batch_is_the_reference_behaviour(make, ctx, parts):
    tt, _, _ = parts
    torch.manual_seed(0)
    vga = make("adapter", "vga", ctx, ff_dim=32, context="per_batch").eval()
    _grow([vga])
    text, z = torch.randn(8, D), torch.randn(5, D)
    out = _vga_chain(tt, vga, text, z, _step())
    assert out.shape == (1, 8, D)                          # one text for the whole batch
    other = _vga_chain(tt, vga, text, torch.cat([z[:2], torch.randn(3, D)]), _step())
    assert not torch.allclose(out, other)                  # depends on the other images


@pytest.mark.parametrize("context", ["per_sample", "per_batch"])
def test_one_masked_call_equals_separate_calls_per_task(make, ctx, context):
    """Block-diagonal mask: the single call equals running each task's block alone."""
    torch.manual_seed(1)
    tt = make("adapter", "task_tokens", ctx)
    vga = make("adapter", "vga", ctx, ff_dim=32, context=context).eval()
    _grow([tt, vga])
    text, z = torch.randn(8, D), torch.randn(3, D)
    got = _vga_chain(tt, vga, text, z, _step())
    zn = F.normalize(z, dim=-1)
    tokens = tt.tokens()
    for t in range(3):
        rows = torch.nonzero(TOC == t)[:, 0]
        q = torch.cat([text[rows], tokens[t:t + 1]])       # the task's classes + its token
        if context == "per_batch":
            out = vga.decoder(q[None], zn[None])[0]
        else:
            out = vga.decoder(q.expand(3, *q.shape), zn[:, None])
        want = text[rows] + out[..., :-1, :] + out[..., -1:, :]
        torch.testing.assert_close(got[:, rows], want.expand_as(got[:, rows]),
                                   atol=1e-5, rtol=1e-4)


def test_vga_task_blocks_are_isolated_and_unseen_classes_pass(parts):
    tt, vga, _ = parts
    text, z = torch.randn(8, D), torch.randn(2, D)
    step = _step(task=1, seen=5)
    base = _vga_chain(tt, vga, text, z, step)
    moved = text.clone()
    moved[3:5] += 1.0                                     # task 1's classes
    moved[5:] += 5.0                                      # unseen classes (task 2)
    out = _vga_chain(tt, vga, moved, z, step)
    torch.testing.assert_close(out[:, :3], base[:, :3])   # task 0 unaffected
    assert not torch.allclose(out[:, 3:5], base[:, 3:5])
    torch.testing.assert_close(out[:, 5:], moved[5:].expand(2, 3, D))   # passed through
    with torch.no_grad():
        tt.old[0].add_(1.0)                                # task 0's token
    out2 = _vga_chain(tt, vga, text, z, step)
    assert not torch.allclose(out2[:, :3], base[:, :3])
    torch.testing.assert_close(out2[:, 3:5], base[:, 3:5])


def test_vga_without_tokens_and_missing_tokens_error(parts):
    tt, vga, _ = parts
    text, z = torch.randn(8, D), torch.randn(2, D)
    assert vga(text, z, _step()).text.shape == (2, 8, D)
    with pytest.raises(ClapkitError, match="task tokens"):
        vga(text, z, _step(queries=tt.tokens()[:2]))


# -- task_tokens -------------------------------------------------------------------------

def test_task_tokens_grow_freeze_and_round_trip(make, ctx):
    torch.manual_seed(0)
    tt = make("adapter", "task_tokens", ctx, std=0.02)
    assert tt.tokens().shape == (1, D)
    first = tt.current.detach().clone()
    _grow([tt])
    assert tt.tokens().shape == (3, D)
    torch.testing.assert_close(tt.old[0], first)
    names = {n: p.requires_grad for n, p in tt.named_parameters()}
    assert names == {"current": True, "old.0": False, "old.1": False}
    torch.manual_seed(5)
    big = make("adapter", "task_tokens", ctx, std=0.02)
    for t in range(400):
        big.on_task_start(t + 1, 0)
    vals = big.tokens()[1:].detach()
    # N(0, 0.02) truncated at +-2 std has std 0.02 * 0.880
    assert abs(float(vals.std()) - 0.0176) < 0.001 and float(vals.abs().max()) <= 0.04 + 1e-6
    fresh = make("adapter", "task_tokens", ctx)
    _grow([fresh])                                         # resume: replay growth, then load
    fresh.load_state_dict(tt.state_dict())
    torch.testing.assert_close(fresh.tokens(), tt.tokens())
    out = tt(torch.randn(8, D), torch.randn(2, D), _step())
    assert out.text.shape == (2, 8, D) and out.queries.shape == (3, D)


# -- variational -------------------------------------------------------------------------

def test_variational_matches_per_task_reference(parts):
    """Class c uses its task's pair: mu = W_t x + b, sigma = softplus(.)*0.999+0.001."""
    _, _, var = parts
    x, z = torch.randn(2, 8, D), torch.randn(2, D)
    out = var(x, z, _step(s=3))
    q = out.distribution
    ws = {k: var.all_weights(k) for k in ("mu", "sigma")}
    for c in range(8):
        t = int(TOC[c])
        mu = x[:, c] @ ws["mu"][0][t].t() + ws["mu"][1][t]
        sg = F.softplus(x[:, c] @ ws["sigma"][0][t].t() + ws["sigma"][1][t]) * 0.999 + 0.001
        torch.testing.assert_close(q.loc[:, c], mu, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q.scale[:, c], sg, atol=1e-5, rtol=1e-5)
    assert out.text.shape == (3, 2, 8, D) and out.sample_mask is None
    assert (q.scale > 0.001 - 1e-7).all()


def test_variational_samples_follow_q(parts):
    _, _, var = parts
    x, z = torch.randn(1, 8, D), torch.randn(1, D)
    torch.manual_seed(0)
    out = var(x, z, _step(s=4000))
    q = out.distribution
    eps = out.text - x
    torch.testing.assert_close(eps.mean(0), q.loc, atol=0.08, rtol=0.05)
    torch.testing.assert_close(eps.std(0), q.scale, atol=0.05, rtol=0.05)
    torch.testing.assert_close(out.aux["noise_mean"], eps.mean(0)[0], atol=1e-4, rtol=1e-4)


def test_variational_ragged_allocation_and_unseen_classes(parts):
    _, _, var = parts
    x, z = torch.randn(2, 8, D), torch.randn(2, D)
    step = _step(task=1, seen=5, s=9, allocation=torch.tensor([1, 3, 0]))
    out = var(x, z, step)
    assert out.text.shape == (3, 2, 8, D)
    want = torch.tensor([[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]]).bool()
    assert torch.equal(out.sample_mask, want)
    torch.testing.assert_close(out.text[:, :, 5:], x[:, 5:].expand(3, 2, 3, D))
    assert out.distribution.loc.shape == (2, 5, D)
    with pytest.raises(ClapkitError, match="allocation"):
        var(x, z, _step(task=1, seen=5, allocation=torch.tensor([0, 0, 0])))
    # a task routed no samples is scored once, at its mean
    out = var(x, z, _step(task=2, seen=8, s=9, allocation=torch.tensor([0, 3, 2])))
    assert out.sample_mask[:, :3].sum(0).tolist() == [1, 1, 1]
    torch.testing.assert_close(out.text[0, :, :3], x[:, :3] + out.distribution.loc[:, :3])


def test_variational_growth_freezes_old_and_keeps_previous(make, ctx):
    torch.manual_seed(0)
    var = make("adapter", "variational", ctx)
    var.on_task_start(0, 3)
    w0 = var.current.mu.weight.detach().clone()
    var.on_task_start(1, 5)
    assert var.old_mu_weight.shape == (1, D, D) and not var.old_mu_weight.requires_grad
    torch.testing.assert_close(var.old_mu_weight[0], w0)
    torch.testing.assert_close(var.prev_mu_weight[0], w0)
    names = sorted(n for n, p in var.named_parameters() if p.requires_grad)
    assert names == ["current.mu.bias", "current.mu.weight", "current.sigma.bias",
                     "current.sigma.weight"]
    x = torch.randn(2, 8, D, requires_grad=True)
    out = var(x, torch.randn(2, D), _step(task=1, seen=5, s=2))
    out.text.sum().backward()
    assert var.current.mu.weight.grad is not None and var.old_mu_weight.grad is None
    # the snapshot equals the current means on old classes until old pairs change
    torch.testing.assert_close(out.aux["prev_mean"], out.aux["mean"][:, :3].detach())
    fresh = make("adapter", "variational", ctx)
    fresh.on_task_start(0, 3)
    fresh.on_task_start(1, 5)
    fresh.load_state_dict(var.state_dict())                # strict after replayed growth


def test_variational_hierarchy_gives_s_times_sg_samples(make, ctx):
    torch.manual_seed(0)
    var = make("adapter", "variational", ctx, hierarchical=True, global_samples=3)
    _grow([var])
    x, z = torch.randn(2, 8, D), torch.randn(2, D)
    out = var(x, z, _step(s=4, allocation=torch.tensor([4, 2, 4])))
    assert out.text.shape == (12, 2, 8, D)
    assert out.distribution.loc.shape == (3, 2, 8, D)
    assert out.sample_mask.shape == (12, 8)
    assert out.sample_mask[:, 3].sum() == 6 and out.sample_mask[:, :3].all()
    assert {"global_loc", "global_scale", "global_mean", "prev_global_mean"} <= set(out.aux)


def test_variational_text_init_and_batch_independent_input(make, ctx):
    var = make("adapter", "variational", ctx, init="text", templates=["a {}.", "the {}!"])
    var.on_task_start(0, 2)
    m = var.tmpl_mean[:2]
    torch.testing.assert_close(var.current.mu.weight, m.t() @ m / D)   # reference: / D
    with pytest.raises(Exception, match="templates"):
        make("adapter", "variational", ctx, init="text", templates=["no slot"])
    x, z = torch.randn(1, 4, D), torch.randn(3, D)
    out = var(x, z, StepContext(num_samples=2))
    assert out.text.shape == (2, 1, 4, D)                  # batch dim kept at 1


def test_chain_learns_a_class_incremental_toy(make, ctx):
    """task_tokens -> vga -> variational + cosine logits: loss falls, accuracy > chance."""
    torch.manual_seed(0)
    tt = make("adapter", "task_tokens", ctx)
    vga = make("adapter", "vga", ctx, ff_dim=32, dropout=0.0)
    var = make("adapter", "variational", ctx)
    _grow([tt, vga, var], tasks=1)
    toc = torch.tensor([0, 0, 0])
    protos = F.normalize(torch.randn(3, D), dim=-1)
    text = F.normalize(torch.randn(3, D), dim=-1)          # uninformative class texts
    params = [*tt.parameters(), *vga.parameters(), *var.parameters()]
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-2)
    losses, accs = [], []
    for _ in range(50):
        y = torch.randint(0, 3, (32,))
        z = protos[y] + 0.3 * torch.randn(32, D)
        step = StepContext(num_samples=4, seen_classes=3, task_of_class=toc, training=True)
        o = tt(text, z, step)
        o = vga(o.text, z, attrs.evolve(step, queries=o.queries))
        o = var(o.text, z, step)
        logits = (torch.einsum("bd,sbcd->sbc", F.normalize(z, dim=-1),
                               F.normalize(o.text, dim=-1)) * 20).mean(0)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        accs.append(float((logits.argmax(1) == y).float().mean()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    assert sum(accs[-10:]) / 10 > 0.8


def test_variational_sigma_init(make, ctx):
    var = make("adapter", "variational", ctx, sigma_init=0.02, hierarchical=True)
    var.on_task_start(0, 3)
    var.on_task_start(1, 5)
    x = torch.randn(2, 8, D)
    out = var(x, torch.randn(2, D), _step(task=1, seen=5, s=2))
    torch.testing.assert_close(out.distribution.scale, torch.full((1, 2, 5, D), 0.02))
    torch.testing.assert_close(out.aux["global_scale"], torch.full((2, 5, D), 0.02))
    with pytest.raises(Exception, match="sigma_init"):
        make("adapter", "variational", ctx, sigma_init=0.0005)
