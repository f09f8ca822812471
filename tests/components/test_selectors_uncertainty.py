"""Uncertainty-aware exemplar selectors (issue 11): scores against per-item reference loops,
class balance, and Monte-Carlo samples that stay with their item."""

import pytest
import torch

from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext, SelectionInputs, class_quota

CTX = BuildContext(seed=3)
NAMES = ["herding", "energy", "variance", "entropy", "var_entropy", "distance"]


def _inputs(n=30, c=4, s=6, seed=0, mask=False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0] * 12 + [1] * 5 + [2] * 9 + [3] * (n - 26))
    sl = torch.randn(s, n, c, generator=g) * 2
    sm = (torch.rand(s, n, generator=g) > 0.3) if mask else None
    if sm is not None:
        sm[0] = True
    w = sm.float()[..., None] if sm is not None else torch.ones(s, n, 1)
    logits = (sl * w).sum(0) / w.sum(0)
    return SelectionInputs(features=torch.randn(n, 8, generator=g), labels=labels,
                           logits=logits, sample_logits=sl, sample_mask=sm)


def _ref_scores(inp):
    """Per-item loops (the reference's formulas, each item from its own samples only)."""
    out = {"energy": [], "variance": [], "entropy": [], "entropy_mean_logits": [],
           "distance": []}
    for i in range(len(inp.labels)):
        keep = (inp.sample_mask[:, i] if inp.sample_mask is not None
                else torch.ones(inp.sample_logits.shape[0], dtype=torch.bool))
        li = inp.sample_logits[keep, i]                     # [S_i, C]
        p = torch.softmax(li, -1)
        out["energy"].append(torch.logsumexp(li, -1).mean())
        out["variance"].append(p.var(0).sum() if len(li) > 1 else torch.tensor(0.0))
        pm = p.mean(0)
        out["entropy"].append(-(pm * pm.log()).sum())
        pl = torch.softmax(inp.logits[i], -1)               # the reference's entropy input
        out["entropy_mean_logits"].append(-(pl * pl.log()).sum())
        out["distance"].append(inp.logits[i, inp.labels[i]])
    return {k: torch.stack(v) for k, v in out.items()}


def _pick(key, labels, budget):
    sel = []
    for c, q in class_quota(labels, budget).items():
        idx = torch.nonzero(labels == c)[:, 0]
        sel += idx[torch.sort(key[idx], stable=True).indices[:q]].tolist()
    return sorted(sel)


@pytest.mark.parametrize("mask", [False, True])
def test_scores_match_per_item_reference(mask):
    from clapkit_plugins.selectors import _scores as S
    inp = _inputs(mask=mask)
    ref = _ref_scores(inp)
    torch.testing.assert_close(S.energy(inp), ref["energy"])
    torch.testing.assert_close(S.variance(inp), ref["variance"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(S.entropy(inp, "samples"), ref["entropy"], atol=1e-6, rtol=1e-5)
    pm = torch.softmax(inp.logits, -1)                      # reference: softmax(mean logits)
    torch.testing.assert_close(S.entropy(inp), -(pm * pm.log()).sum(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(S.own_logit(inp), ref["distance"])


@pytest.mark.parametrize("name,key", [("energy", lambda r: r["energy"]),
                                      ("variance", lambda r: r["variance"]),
                                      ("entropy", lambda r: -r["entropy_mean_logits"]),
                                      ("distance", lambda r: r["distance"])])
def test_selection_follows_the_documented_order(make, name, key):
    inp = _inputs(seed=4)
    idx = make("selector", name, CTX).select(inp, 10)
    assert idx.tolist() == _pick(key(_ref_scores(inp)), inp.labels, 10)


@pytest.mark.parametrize("name", NAMES)
def test_class_balanced_unique_positions(make, name):
    inp = _inputs(seed=1)
    idx = make("selector", name, CTX).select(inp, 9)
    assert idx.dtype == torch.long and len(set(idx.tolist())) == 9
    got = torch.bincount(inp.labels[idx], minlength=4).tolist()
    assert got == [class_quota(inp.labels, 9)[c] for c in range(4)]
    everything = make("selector", name, CTX).select(inp, 1000)
    assert everything.tolist() == list(range(len(inp.labels)))


@pytest.mark.parametrize("name", ["energy", "variance", "entropy", "var_entropy"])
def test_mc_scores_stay_with_their_item(make, name):
    """Permuting items (with their own samples) permutes the selection the same way; an
    item with tight samples is never confused with one whose samples are spread."""
    inp = _inputs(seed=2)
    perm = torch.randperm(len(inp.labels), generator=torch.Generator().manual_seed(9))
    shuffled = SelectionInputs(features=inp.features[perm], labels=inp.labels[perm],
                               logits=inp.logits[perm],
                               sample_logits=inp.sample_logits[:, perm])
    sel = make("selector", name, CTX)
    a = set(sel.select(inp, 8).tolist())
    b = set(perm[sel.select(shuffled, 8)].tolist())
    assert a == b
    # one certain item per class among spread ones: variance must keep exactly those
    s, n, c = 8, 12, 3
    labels = torch.arange(n) % c
    sl = torch.randn(s, n, c) * 4
    steady = torch.tensor([3, 7, 11])
    sl[:, steady] = sl[0, steady]                           # identical samples -> variance 0
    v = make("selector", "variance", CTX).select(
        SelectionInputs(features=torch.randn(n, 4), labels=labels, logits=sl.mean(0),
                        sample_logits=sl), 3)
    assert sorted(v.tolist()) == steady.tolist()


def test_var_entropy_is_rank_sum():
    from clapkit_plugins.selectors import _scores as S
    inp = _inputs(seed=5)
    key = S.ranks(S.variance(inp)) + S.ranks(-S.entropy(inp, "samples"))
    assert torch.equal(S.ranks(torch.tensor([3.0, 1.0, 2.0, 1.0])), torch.tensor([3, 0, 2, 1]))
    from clapkit_plugins.selectors.var_entropy import VarEntropySelector
    assert VarEntropySelector().select(inp, 8).tolist() == _pick(key, inp.labels, 8)


def test_variance_needs_samples_and_others_fall_back_to_logits(make):
    inp = _inputs()
    bare = SelectionInputs(features=inp.features, labels=inp.labels, logits=inp.logits)
    with pytest.raises(ClapkitError, match="Monte-Carlo"):
        make("selector", "variance", CTX).select(bare, 5)
    e = make("selector", "energy", CTX).select(bare, 8)
    assert e.tolist() == _pick(torch.logsumexp(inp.logits, -1), inp.labels, 8)


@pytest.mark.parametrize("on", ["logits", "features"])
def test_herding_matches_icarl_loop(make, on):
    """Default: on the normalised mean logits (the reference's HerdingExemplarsSelector)."""
    inp = _inputs(seed=6)
    opts = {} if on == "logits" else {"on": "features"}
    got = make("selector", "herding", CTX, **opts).select(inp, 10).tolist()
    f = torch.nn.functional.normalize(inp.logits if on == "logits" else inp.features, dim=-1)
    want = []
    for c, q in class_quota(inp.labels, 10).items():
        idx = torch.nonzero(inp.labels == c)[:, 0].tolist()
        mu = f[idx].mean(0)
        chosen, running = [], torch.zeros(f.shape[1])
        for k in range(q):
            best = min((i for i in idx if i not in chosen),
                       key=lambda i: float((mu - (running + f[i]) / (k + 1)).norm()))
            chosen.append(best)
            running += f[best]
        want += chosen
    assert got == sorted(want)


def test_per_class_sample_mask_ignores_padded_values():
    """[S,N,C] masks (ragged per task): padded entries may hold anything."""
    from clapkit_plugins.selectors import _scores as S
    inp = _inputs(seed=7)
    s, n, c = inp.sample_logits.shape
    mask = torch.ones(s, n, c, dtype=torch.bool)
    mask[3:, :, 2:] = False                                 # classes 2,3: only 3 samples
    garbage = inp.sample_logits.clone()
    garbage[~mask] = 1e4
    fill = inp.sample_logits.clone()
    mean = inp.sample_logits[:3, :, 2:].mean(0)
    fill[3:, :, 2:] = mean
    a = SelectionInputs(features=inp.features, labels=inp.labels, logits=inp.logits,
                        sample_logits=garbage, sample_mask=mask)
    b = SelectionInputs(features=inp.features, labels=inp.labels, logits=inp.logits,
                        sample_logits=fill)
    for f in (S.energy, S.variance, S.entropy):
        torch.testing.assert_close(f(a), f(b))
