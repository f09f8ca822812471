"""uniform router and random selector."""

import torch

from clapkit.interfaces import BuildContext, SelectionInputs, StepContext, class_quota

CTX = BuildContext(seed=11)


def _step(n, tasks, present=None):
    return StepContext(num_samples=n, task_of_class=tasks, tasks_present=present)


def _inputs(feats, labels):
    return SelectionInputs(features=feats, labels=labels,
                           logits=torch.zeros(len(labels), int(labels.max()) + 1))


def test_uniform_router_each_and_split(make):
    tasks = torch.tensor([0, 0, 1, 1, 2])
    z = torch.randn(4, 8)
    each = make("router", "uniform", CTX)
    out = each(z, _step(10, tasks))
    assert out.dtype == torch.long and out.tolist() == [10, 10, 10]
    split = make("router", "uniform", CTX, mode="split")
    assert split(z, _step(10, tasks)).tolist() == [4, 3, 3]
    assert split(z, _step(2, tasks)).tolist() == [1, 1, 0]
    # every present task gets at least one sample (index or mask form)
    assert split(z, _step(2, tasks, torch.tensor([2]))).tolist() == [1, 1, 1]
    assert split(z, _step(1, tasks, torch.tensor([False, True, True]))).tolist() == [1, 1, 1]


def test_random_selector_quotas_uniqueness_and_seed(make):
    labels = torch.tensor([5] * 10 + [2] * 3 + [9] * 7)
    feats = torch.randn(len(labels), 4)
    sel = make("selector", "random", CTX)
    idx = sel.select(_inputs(feats, labels), 9)
    assert idx.dtype == torch.long and len(set(idx.tolist())) == 9
    quota = class_quota(labels, 9)
    for c, q in quota.items():
        assert int((labels[idx] == c).sum()) == q
    assert torch.equal(idx, make("selector", "random", CTX).select(_inputs(feats, labels), 9))
    other = make("selector", "random", CTX, seed=123).select(_inputs(feats, labels), 9)
    assert not torch.equal(other, idx)
    assert sorted(sel.select(_inputs(feats, labels), 100).tolist()) == list(range(20))
    assert sel.select(_inputs(feats, labels), 0).numel() == 0


def test_random_selector_is_uniform_within_a_class(make):
    labels = torch.zeros(10, dtype=torch.long)
    hits = torch.zeros(10)
    for seed in range(300):
        idx = make("selector", "random", BuildContext(seed=seed)).select(
            _inputs(torch.zeros(10, 2), labels), 3)
        hits[idx] += 1
    assert hits.min() > 50 and hits.max() < 130           # expected 90 each
