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
