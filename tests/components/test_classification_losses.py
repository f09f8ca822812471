"""cross_entropy, label_smoothing, class_balanced, logit_adjusted: reference formulas, mixup."""

import math

import pytest
import torch
import torch.nn.functional as F

from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext

LOGITS = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-2.0, 3.0, 0.0, 1.0]]
LABELS = [0, 3, 1]


def hand_ce(logits, label):
    """-log softmax(logits)[label], written out."""
    return -(logits[label] - math.log(sum(math.exp(v) for v in logits)))


def hand_log_probs(logits):
    lse = math.log(sum(math.exp(v) for v in logits))
    return [v - lse for v in logits]


def outputs_batch(logits=LOGITS, labels=LABELS, **extra):
    t = torch.tensor(logits, requires_grad=True)
    return t, {"logits": t}, {"label": torch.tensor(labels), **extra}


@pytest.fixture
def counts_ctx():
    return BuildContext(class_names=["a", "b", "c", "d"], class_counts=[100, 10, 1, 0])


def test_cross_entropy_reference_and_gradient(make, counts_ctx):
    loss = make("loss", "cross_entropy", counts_ctx)
    t, out, batch = outputs_batch()
    value = loss(out, batch)
    want = sum(hand_ce(l, y) for l, y in zip(LOGITS, LABELS)) / 3
    assert abs(value.item() - want) < 1e-6
    value.backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_every_classification_loss_supports_mixup(make, counts_ctx):
    lam = 0.7
    for name, opts in [("cross_entropy", {}), ("label_smoothing", {"eps": 0.2}),
                       ("class_balanced", {"beta": 0.99}), ("logit_adjusted", {"tau": 1.0}),
                       ("semantic_ldl", {})]:
        loss = make("loss", name, counts_ctx, **opts)
        text = torch.randn(4, 6)
        _, out, batch = outputs_batch(label_b=torch.tensor([2, 2, 0]), mix_lam=lam)
        out["text"] = text
        mixed = loss(out, batch)
        a = loss(out, {"label": batch["label"]})
        b = loss(out, {"label": batch["label_b"]})
        torch.testing.assert_close(mixed, lam * a + (1 - lam) * b, msg=name)
        # per-sample lam: the same combination row by row
        lam_b = torch.tensor([0.2, 0.5, 1.0])
        per = loss(out, {**batch, "mix_lam": lam_b})
        rows = [lam_b[i] * loss({"logits": out["logits"][i:i + 1], "text": text},
                                {"label": batch["label"][i:i + 1]})
                + (1 - lam_b[i]) * loss({"logits": out["logits"][i:i + 1], "text": text},
                                        {"label": batch["label_b"][i:i + 1]})
                for i in range(3)]
        torch.testing.assert_close(per, torch.stack(rows).mean(), msg=name)


def test_label_smoothing_reference_and_torch(make, counts_ctx):
    eps = 0.1
    loss = make("loss", "label_smoothing", counts_ctx, eps=eps)
    t, out, batch = outputs_batch()
    value = loss(out, batch)
    want = sum((1 - eps) * hand_ce(l, y) + eps * -sum(hand_log_probs(l)) / 4
               for l, y in zip(LOGITS, LABELS)) / 3
    assert abs(value.item() - want) < 1e-6
    # the same quantity as PyTorch's label_smoothing (target (1-eps)*onehot + eps/C)
    ref = F.cross_entropy(t, batch["label"], label_smoothing=eps)
    assert abs(value.item() - ref.item()) < 1e-6
    g = torch.Generator().manual_seed(0)
    big = torch.randn(64, 7, generator=g) * 5
    y = torch.randint(0, 7, (64,), generator=g)
    torch.testing.assert_close(loss({"logits": big}, {"label": y}),
                               F.cross_entropy(big, y, label_smoothing=eps), atol=1e-6, rtol=0)
    value.backward()
    assert t.grad.abs().sum() > 0


def test_class_balanced_weights_follow_cui_et_al(make, counts_ctx):
    beta = 0.99
    loss = make("loss", "class_balanced", counts_ctx, beta=beta)
    counts = [100, 10, 1, 1]                  # the empty class counts as one
    w = [(1 - beta) / (1 - beta ** n) for n in counts]
    w = [x / sum(w) * 4 for x in w]
    t, out, batch = outputs_batch()
    value = loss(out, batch)
    want = sum(w[y] * hand_ce(l, y) for l, y in zip(LOGITS, LABELS)) / 3
    assert abs(value.item() - want) < 1e-5
    assert w[2] > w[1] > w[0]
    value.backward()
    assert t.grad.abs().sum() > 0


def test_logit_adjusted_reference(make, counts_ctx):
    tau = 0.5
    loss = make("loss", "logit_adjusted", counts_ctx, tau=tau)
    counts = [100, 10, 1, 1]
    prior = [c / sum(counts) for c in counts]
    t, out, batch = outputs_batch()
    value = loss(out, batch)
    want = sum(hand_ce([v + tau * math.log(p) for v, p in zip(l, prior)], y)
               for l, y in zip(LOGITS, LABELS)) / 3
    assert abs(value.item() - want) < 1e-5
    value.backward()
    assert t.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["class_balanced", "logit_adjusted"])
def test_balancing_losses_need_class_counts(make, name):
    with pytest.raises(ClapkitError, match="class counts"):
        make("loss", name, BuildContext(class_names=["a", "b"]))
    with pytest.raises(ClapkitError, match="3 class counts for 2 classes"):
        make("loss", name, BuildContext(class_names=["a", "b"], class_counts=[1, 2, 3]))


def test_over_samples_averages_ce_over_monte_carlo_samples(make, counts_ctx):
    loss = make("loss", "cross_entropy", counts_ctx, over_samples=True)
    samples = torch.randn(3, 2, 4)
    y = torch.tensor([1, 2])
    got = loss({"logits": samples.mean(0), "sample_logits": samples}, {"label": y})
    want = torch.stack([F.cross_entropy(s, y) for s in samples]).mean()
    torch.testing.assert_close(got, want)
