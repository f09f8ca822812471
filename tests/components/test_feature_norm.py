"""feature_norm standardises each channel over batch and frames, and keeps running stats."""

import torch

from clapkit.interfaces import BuildContext


def test_standardises_anisotropic_features(make, ctx):
    norm = make("adapter", "feature_norm", ctx)
    d = ctx.embed_dim
    common = torch.randn(d) * 5.0
    x = common + 0.1 * torch.randn(32, 4, d)          # mean pairwise cosine close to 1
    y = norm.train()(x)
    flat = y.reshape(-1, d)
    torch.testing.assert_close(flat.mean(0), torch.zeros(d), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(0, unbiased=False), torch.ones(d), atol=1e-2, rtol=0)
    n = torch.nn.functional.normalize(y.mean(1), dim=-1)
    assert (n @ n.t()).mean() < 0.2                    # the common direction is gone
    norm.eval()
    ref = (x - norm.norm.running_mean) / (norm.norm.running_var + norm.norm.eps).sqrt()
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)


def test_cumulative_statistics_are_exact_over_every_batch_and_order_free(make, ctx):
    """``statistics = "cumulative"``: after tasks with different data the transform is the
    standardisation by the mean and (population) variance of all training features seen,
    whatever the batch split or order; evaluation does not move it."""
    d = ctx.embed_dim
    g = torch.Generator().manual_seed(0)
    task_a = torch.randn(24, 2, d, generator=g) + 3.0
    task_b = torch.randn(10, 2, d, generator=g) * 2.0 - 1.0
    norm = make("adapter", "feature_norm", ctx, statistics="cumulative")
    norm.train()
    for chunk in (*task_a.split(7), *task_b.split(4)):
        norm(chunk)
    flat = torch.cat([task_a, task_b]).reshape(-1, d).double()
    torch.testing.assert_close(norm.mean, flat.mean(0))
    torch.testing.assert_close(norm.m2 / norm.count, flat.var(0, unbiased=False))
    other = make("adapter", "feature_norm", ctx, statistics="cumulative").train()
    other(task_b)
    other(task_a)                                     # other order, other batches
    torch.testing.assert_close(other.mean, norm.mean)
    norm.eval()
    probe = torch.randn(5, 2, d, generator=g)
    want = (probe - flat.mean(0).float()) / (flat.var(0, unbiased=False).float() + 1e-5).sqrt()
    torch.testing.assert_close(norm(probe), want, atol=1e-4, rtol=1e-4)
    before = norm.mean.clone()
    norm(probe)
    assert torch.equal(norm.mean, before)
