"""CLAP4CLIP anchor router and loss terms (issue 11): numerics against reference formulas."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from clapkit.errors import ClapkitError
from clapkit.interfaces import StepContext, TaskView

D = 12
TOC = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])


def _view(task, z):
    return TaskView(task=task, classes=[], labels=torch.zeros(len(z), dtype=torch.long), z=z)


# -- anchor router -----------------------------------------------------------------------

def test_anchor_router_weights_allocation_and_guarantees(make, ctx):
    r = make("router", "anchor", ctx)
    assert r.temperature == 2.0
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, D, generator=g), dim=-1) * 3
    for t in range(3):
        r.on_task_start(t, int((TOC <= t).sum()))
        zs = centres[t] + 0.1 * torch.randn(20, D, generator=g)
        r.on_task_end(t, _view(t, zs))
        torch.testing.assert_close(r.anchors[t], F.normalize(zs.mean(0), dim=-1))
    assert r.filled.all()
    z = centres[1] + 0.1 * torch.randn(6, D, generator=g)
    w = r.task_weights(z, 3)
    want = torch.softmax(F.normalize(z, dim=-1) @ r.anchors.t() / 2.0, dim=-1)
    torch.testing.assert_close(w, want)
    step = StepContext(task=2, seen_classes=8, num_samples=20, task_of_class=TOC)
    alloc = r(z, step)                                      # no labels: test time
    assert alloc.dtype == torch.long and int(alloc.sum()) == 20
    assert int(alloc.argmax()) == 1                         # most similar task gets most
    exact = want.mean(0) * 20
    assert ((alloc - exact).abs() < 1).all()                # largest-remainder shares
    few = r(z, StepContext(task=2, seen_classes=8, num_samples=1, task_of_class=TOC,
                           tasks_present=torch.tensor([0, 2])))
    assert few[0] >= 1 and few[2] >= 1 and int(few.sum()) >= 1


def test_anchor_router_current_task_unfilled_and_unseen_tasks(make, ctx):
    r = make("router", "anchor", ctx, temperature=0.05)
    r.on_task_start(0, 3)
    r.on_task_end(0, _view(0, torch.randn(10, D)))
    r.on_task_start(1, 5)                                   # task 1 being learned
    z = torch.randn(4, D)
    alloc = r(z, StepContext(task=1, seen_classes=5, num_samples=10, task_of_class=TOC))
    assert alloc.shape == (3,) and alloc[2] == 0           # unseen task: nothing
    assert alloc[1] >= alloc[0]                             # unfilled anchor counts as cos 1
    fresh = make("router", "anchor", ctx)
    fresh.on_task_start(0, 3)
    fresh.on_task_start(1, 5)
    fresh.load_state_dict(r.state_dict())                  # grown buffers load strictly
    torch.testing.assert_close(fresh.anchors, r.anchors)
    with pytest.raises(Exception):
        make("router", "anchor", ctx, temperature=0.0)


# -- prior_kl ----------------------------------------------------------------------------

def _q(shape=(2, 8, D), seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(*shape, generator=g).requires_grad_()
    sigma = (torch.rand(*shape, generator=g) + 0.1).requires_grad_()
    return Normal(mu, sigma)


def test_prior_kl_matches_torch_kl_divergence(make, ctx):
    q = _q()
    loss = make("loss", "prior_kl", ctx, scope="seen")
    assert loss.needs == ("distributions.variational",)
    got = loss({"distributions": {"variational": q}, "aux": {}}, {})
    ref = kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale)))
    torch.testing.assert_close(got, 0.001 * ref.sum(-1).mean())
    got.backward()
    assert q.loc.grad is not None
    # current task only: classes of task 2 while learning task 2
    cur = make("loss", "prior_kl", ctx, scale=1.0)
    step = StepContext(task=2, seen_classes=8, task_of_class=TOC)
    v = cur({"distributions": {"variational": q}, "aux": {}}, {"step": step})
    torch.testing.assert_close(v, ref[:, 5:].sum(-1).mean())


def test_prior_kl_data_prior_and_global_term(make, ctx):
    q = _q()
    p_loc, p_scale = torch.randn(1, 8, D), torch.rand(1, 8, D) + 0.5
    g_loc, g_scale = torch.randn(2, 8, D), torch.rand(2, 8, D) + 0.5
    aux = {"variational.prior_loc": p_loc, "variational.prior_scale": p_scale,
           "variational.global_loc": g_loc, "variational.global_scale": g_scale}
    loss = make("loss", "prior_kl", ctx, prior="data", scope="seen", scale=1.0)
    got = loss({"distributions": {"variational": q}, "aux": aux}, {})
    want = (kl_divergence(q, Normal(p_loc, p_scale)).sum(-1).mean()
            + kl_divergence(Normal(g_loc, g_scale), Normal(0.0, 1.0)).sum(-1).mean())
    torch.testing.assert_close(got, want)
    with pytest.raises(ClapkitError, match="prior_loc"):
        loss({"distributions": {"variational": q}, "aux": {}}, {})


def test_data_prior_from_the_adapter(make, ctx):
    var = make("adapter", "variational", ctx, prior="data", context_size=1.0)
    for t in range(3):
        var.on_task_start(t, int((TOC <= t).sum()))
    x = torch.randn(4, 8, D)
    label = torch.tensor([6, 0, 7, 3])                      # items 0 and 2 are task 2's
    step = StepContext(task=2, seen_classes=8, num_samples=2, task_of_class=TOC, label=label)
    out = var(x, torch.randn(4, D), step)
    mu, sigma = var.task_params(x[[0, 2]].mean(0, keepdim=True), TOC)
    torch.testing.assert_close(out.aux["prior_loc"], mu)
    torch.testing.assert_close(out.aux["prior_scale"], sigma)


# -- lasp, ortho, distill ----------------------------------------------------------------

def test_lasp_matches_the_reference_double_average(make, ctx):
    loss = make("loss", "lasp", ctx, templates=["a {}.", "a photo of a {}.", "the {}"],
                scope="seen")
    c = len(ctx.class_names)
    bb = ctx.backbone
    feats = F.normalize(bb.encode_text(bb.tokenize(
        [t.format(n.replace("_", " ")) for n in ctx.class_names
         for t in ["a {}.", "a photo of a {}.", "the {}"]])), dim=-1).reshape(c, 3, -1)
    eps = torch.randn(5, c, bb.embed_dim, requires_grad=True)   # S samples of each class
    # reference: sims[s] = prior [C,P,D] @ eps[s].T -> mean over templates, then samples
    sims = torch.stack([feats @ eps[s].t() for s in range(5)]).mean(2).mean(0)
    want = 15.0 * F.cross_entropy(sims, torch.arange(c))
    got = loss({"aux": {"variational.noise_mean": eps.mean(0)}}, {})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got.backward()
    assert eps.grad is not None


def test_ortho_matches_formula(make, ctx):
    m = torch.randn(8, D, requires_grad=True)
    got = make("loss", "ortho", ctx)({"aux": {"variational.noise_mean": m}}, {})
    want = 5.0 * F.cross_entropy(m @ m.t(), torch.arange(8))
    torch.testing.assert_close(got, want)


def test_distill_with_and_without_hierarchy(make, ctx):
    for hier in (False, True):
        torch.manual_seed(0)
        var = make("adapter", "variational", ctx, hierarchical=hier)
        var.on_task_start(0, 3)
        loss = make("loss", "distill", ctx)
        x, z = torch.randn(2, 8, D), torch.randn(2, D)
        s0 = StepContext(task=0, seen_classes=3, num_samples=2, task_of_class=TOC)
        out = var(x, z, s0)
        v0 = loss({"aux": {f"variational.{k}": v for k, v in out.aux.items()}}, {"step": s0})
        assert float(v0.detach()) == 0.0 and v0.requires_grad        # no previous task yet
        var.on_task_start(1, 5)
        with torch.no_grad():                               # train the learnable part
            (var.global_.mu if hier else var.current.mu).weight.add_(0.5)
            var.old_mu_weight.add_(0.0 if hier else 0.5)    # finetuning moves old pairs
        s1 = StepContext(task=1, seen_classes=5, num_samples=2, task_of_class=TOC)
        out = var(x, z, s1)
        aux = {f"variational.{k}": v for k, v in out.aux.items()}
        got = loss({"aux": aux}, {"step": s1})
        key = ("global_mean", "prev_global_mean") if hier else ("mean", "prev_mean")
        now, prev = aux[f"variational.{key[0]}"], aux[f"variational.{key[1]}"]
        want = 0.3 * F.mse_loss(now[..., :prev.shape[-2], :], prev.expand_as(
            now[..., :prev.shape[-2], :]))
        torch.testing.assert_close(got, want)
        assert float(got.detach()) > 0
    with pytest.raises(ClapkitError, match="hierarchy"):
        make("loss", "distill", ctx, target="global")({"aux": aux_no_global()}, {})


def aux_no_global():
    return {"variational.mean": torch.zeros(1, 3, D)}
