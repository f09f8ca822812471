"""semantic_ldl, mi and dc against formulas written out here."""

import math

import torch
import torch.nn.functional as F

from clapkit.interfaces import BuildContext

CTX = BuildContext(class_names=["a", "b", "c"])


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def cos(u, v):
    return float(u @ v / (u.norm() * v.norm()))


def test_semantic_ldl_reference_formula(make):
    tau = 0.5
    loss = make("loss", "semantic_ldl", CTX, temperature=tau)
    text = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 2.0]])
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], requires_grad=True)
    labels = [0, 2]
    value = loss({"logits": logits, "text": text}, {"label": torch.tensor(labels)})
    want = 0.0
    for b, y in enumerate(labels):
        q = softmax([cos(text[y], text[k]) / tau for k in range(3)])
        p = softmax(logits[b].tolist())
        want += sum(qk * math.log(qk / pk) for qk, pk in zip(q, p))
    assert abs(value.item() - want / 2) < 1e-5
    value.backward()
    assert logits.grad.abs().sum() > 0


def test_semantic_ldl_normalises_text_features(make):
    """Scaling the text features by 100 must not change the loss (seed 003's bug: the
    un-normalised dot products give a different, saturated target)."""
    loss = make("loss", "semantic_ldl", CTX)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(3, 16, generator=g)
    logits = torch.randn(8, 3, generator=g)
    y = torch.arange(8) % 3
    a = loss({"logits": logits, "text": text}, {"label": y})
    b = loss({"logits": logits, "text": text * 100}, {"label": y})
    torch.testing.assert_close(a, b)
    # what the buggy (un-normalised) target would have been differs
    q_bug = F.softmax((text * 100)[y] @ (text * 100).t() / 0.1, dim=-1)
    q_ok = F.softmax(F.normalize(text, dim=-1)[y] @ F.normalize(text, dim=-1).t() / 0.1, dim=-1)
    assert (q_bug - q_ok).abs().max() > 1e-3


def test_semantic_ldl_is_not_near_zero_at_init(make):
    ctx = BuildContext(class_names=[str(i) for i in range(7)])
    loss = make("loss", "semantic_ldl", ctx)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(7, 64, generator=g)
    logits = 0.01 * torch.randn(32, 7, generator=g)      # near-uniform prediction at init
    value = loss({"logits": logits, "text": text}, {"label": torch.arange(32) % 7})
    assert value.item() > 0.5, value.item()


def test_semantic_ldl_warmup_uses_hard_labels(make):
    loss = make("loss", "semantic_ldl", CTX, warmup_epochs=2)
    logits, text = torch.randn(4, 3), torch.randn(3, 5)
    y = torch.tensor([0, 1, 2, 0])
    out = {"logits": logits, "text": text}
    for epoch in (0, 1):
        torch.testing.assert_close(loss(out, {"label": y, "epoch": epoch}),
                                   F.cross_entropy(logits, y))
    assert not torch.allclose(loss(out, {"label": y, "epoch": 2}), F.cross_entropy(logits, y))


def test_semantic_ldl_reads_the_named_view_and_detaches_target(make):
    loss = make("loss", "semantic_ldl", CTX, view="desc")
    assert loss.needs == ("logits", "views.desc")
    text = torch.randn(3, 5, requires_grad=True)
    logits = torch.randn(2, 3, requires_grad=True)
    loss({"logits": logits, "views": {"desc": text}, "text": torch.randn(3, 5)},
         {"label": torch.tensor([0, 1])}).backward()
    assert text.grad is None and logits.grad is not None


def test_mi_is_symmetric_info_nce(make):
    temp = 0.5
    loss = make("loss", "mi", CTX, temperature=temp)
    assert set(loss.needs) == {"views.desc", "views.soft"}
    g = torch.Generator().manual_seed(2)
    desc = torch.randn(3, 4, generator=g)
    soft = torch.randn(3, 4, generator=g, requires_grad=True)
    value = loss({"views": {"desc": desc, "soft": soft}}, {})
    s = [[cos(soft[i].detach(), desc[j]) / temp for j in range(3)] for i in range(3)]
    row = -sum(math.log(softmax(s[i])[i]) for i in range(3)) / 3
    col = -sum(math.log(softmax([s[k][j] for k in range(3)])[j]) for j in range(3)) / 3
    assert abs(value.item() - (row + col) / 2) < 1e-5
    value.backward()
    assert soft.grad.abs().sum() > 0
    # aligned views give a lower loss than shuffled ones
    aligned = loss({"views": {"desc": desc, "soft": desc * 2}}, {})
    shuffled = loss({"views": {"desc": desc, "soft": desc[[1, 2, 0]]}}, {})
    assert aligned < shuffled


def test_mi_per_sample_views(make):
    loss = make("loss", "mi", CTX)
    desc, soft = torch.randn(3, 4), torch.randn(2, 3, 4)
    value = loss({"views": {"desc": desc, "soft": soft}}, {})
    want = torch.stack([loss({"views": {"desc": desc, "soft": soft[b]}}, {}) for b in range(2)])
    torch.testing.assert_close(value, want.mean())


def test_dc_prompts_reference(make):
    loss = make("loss", "dc", CTX, target="prompts", view="soft")
    assert loss.needs == ("views.soft",)
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], requires_grad=True)
    value = loss({"views": {"soft": t}}, {})
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    want = sum(cos(t[i].detach(), t[j].detach()) ** 2 for i, j in pairs) / len(pairs)
    assert abs(value.item() - want) < 1e-6
    value.backward()
    assert t.grad.abs().sum() > 0


def test_dc_features_is_off_diagonal_channel_correlation(make):
    loss = make("loss", "dc", CTX, target="features")
    assert loss.needs == ("z",)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 3, generator=g, requires_grad=True)
    value = loss({"z": z}, {})
    zd = z.detach()
    zs = (zd - zd.mean(0)) / zd.std(0, unbiased=False)
    want = sum(float((zs[:, i] * zs[:, j]).mean()) ** 2
               for i in range(3) for j in range(3) if i != j) / 6
    assert abs(value.item() - want) < 1e-4
    value.backward()
    assert z.grad.abs().sum() > 0
    # perfectly correlated channels give the maximum, 1
    base = torch.randn(16, 1, generator=g)
    torch.testing.assert_close(loss({"z": base.repeat(1, 3) * torch.tensor([1.0, 2.0, -3.0])}, {}),
                               torch.tensor(1.0), atol=1e-3, rtol=0)


def test_dc_both_is_the_sum(make):
    both = make("loss", "dc", CTX, target="both")
    p = make("loss", "dc", CTX, target="prompts")
    f = make("loss", "dc", CTX, target="features")
    out = {"z": torch.randn(8, 4), "text": torch.randn(3, 4)}
    torch.testing.assert_close(both(out, {}), p(out, {}) + f(out, {}))
