"""OOD scores from logits / MC samples (hand-computed and loop references) and the table."""

from __future__ import annotations

import math

import pytest
import torch

from clapkit.metrics import aupr, auroc, fpr95
from clapkit.ood import (NoveltyMeter, flat_ood_metrics, ood_scores, ood_table,
                         parse_ood_metrics, sample_variance)


def test_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    s = ood_scores(logits)
    assert set(s) == {"energy", "msp", "entropy"}            # no samples: no variance
    assert s["energy"].tolist() == pytest.approx([math.log(math.exp(2) + 1), math.log(2)])
    p = math.exp(2) / (math.exp(2) + 1)
    assert s["msp"].tolist() == pytest.approx([p, 0.5])
    h0 = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert s["entropy"].tolist() == pytest.approx([-h0, -math.log(2)])
    # the confident item is more "in-distribution" under every score
    assert all(bool(v[0] > v[1]) for v in s.values())


def test_variance_score_and_orientation():
    # item 0: samples agree; item 1: samples disagree
    sl = torch.tensor([[[1.0, 0.0], [3.0, 0.0]],
                       [[1.0, 0.0], [-1.0, 2.0]]])          # [S=2, B=2, C=2]
    s = ood_scores(sl.mean(0), sl)
    # unbiased var over 2 samples: item 1 class 0: values 3, -1 -> 8; class 1: 0, 2 -> 2
    assert s["variance"].tolist() == pytest.approx([0.0, -10.0])
    assert list(s) == ["energy", "msp", "variance", "entropy"]


def test_ragged_sample_mask_matches_per_class_loop():
    g = torch.Generator().manual_seed(0)
    S, B, C = 6, 4, 5
    sl = torch.randn(S, B, C, generator=g)
    # classes of task 0 (0,1) got 4 samples, task 1 (2,3,4) got 2; the rest is padding
    counts = torch.tensor([4, 4, 2, 2, 2])
    mask = torch.arange(S)[:, None] < counts[None, :]                 # [S,C]
    padded = sl.masked_fill(~mask[:, None, :], 1e6)                   # garbage in padding
    var = sample_variance(padded, mask)
    for b in range(B):
        for c in range(C):
            ref = sl[: counts[c], b, c].double().var(correction=1)
            assert var[b, c] == pytest.approx(float(ref), rel=1e-9)
    # the [S,B,C] form gives the same
    assert torch.allclose(sample_variance(padded, mask[:, None, :].expand(S, B, C)), var)
    # one real sample: variance 0, not NaN
    one = torch.zeros(S, dtype=torch.bool)
    one[0] = True
    v1 = sample_variance(sl, one[:, None].expand(S, C))
    assert torch.equal(v1, torch.zeros(B, C, dtype=torch.float64))
    with pytest.raises(ValueError, match="sample_mask"):
        sample_variance(sl, mask[:, :3])


def test_seen_restriction_handles_minus_inf_columns():
    logits = torch.tensor([[1.0, 2.0, -math.inf, -math.inf], [0.5, 0.1, -math.inf, -math.inf]])
    sl = logits[None].repeat(3, 1, 1) + torch.tensor([0.0, 0.1, -0.1])[:, None, None]
    full = ood_scores(logits, sl, seen=2)
    ref = ood_scores(logits[:, :2], sl[:, :, :2])
    for k in ref:
        assert torch.allclose(full[k], ref[k]) and torch.isfinite(full[k]).all()
    # without seen=, entropy and energy still cope with -inf (p = 0 contributes 0)
    s = ood_scores(logits)
    assert torch.isfinite(s["entropy"]).all() and torch.isfinite(s["energy"]).all()
    with pytest.raises(ValueError, match="no finite logit"):
        ood_scores(torch.full((1, 3), -math.inf))
    with pytest.raises(ValueError, match=r"\[S,B,C\]"):
        ood_scores(logits, sl[:, :1])


def test_table_matches_metric_functions_and_separates():
    g = torch.Generator().manual_seed(1)
    # ID items: one class clearly wins; OOD items: flat logits
    id_logits = torch.randn(40, 5, generator=g) + 4.0 * torch.nn.functional.one_hot(
        torch.randint(0, 5, (40,), generator=g), 5)
    ood_logits = torch.randn(30, 5, generator=g) * 0.3
    meter = NoveltyMeter()
    meter.update(True, id_logits[:25])
    meter.update_outputs(True, {"logits": id_logits[25:]})
    meter.update(False, ood_logits)
    table = meter.compute()
    assert list(table) == ["energy", "msp", "entropy"]
    for name, row in table.items():
        a, b = ood_scores(id_logits)[name], ood_scores(ood_logits)[name]
        s = torch.cat([a, b])
        y = torch.cat([torch.ones(40), torch.zeros(30)]).long()
        assert row == pytest.approx({"auroc": auroc(s, y), "aupr": aupr(s, y),
                                     "fpr95": fpr95(s, y)})
        assert row["auroc"] > 0.9 and row["fpr95"] < 0.5
    flat = flat_ood_metrics(table)
    assert flat["ood/msp/auroc"] == table["msp"]["auroc"] and len(flat) == 9
    assert parse_ood_metrics({**flat, "acc_seen": 0.5}) == table
    empty = ood_table({"energy": torch.ones(3)}, {"energy": torch.zeros(0)})
    assert math.isnan(empty["energy"]["auroc"])


def test_meter_with_samples_reports_variance():
    g = torch.Generator().manual_seed(2)
    id_sl = torch.randn(8, 20, 4, generator=g) * 0.1 + 3 * torch.eye(4)[torch.arange(20) % 4]
    ood_sl = torch.randn(8, 20, 4, generator=g) * 2.0
    meter = NoveltyMeter(seen=4)
    meter.update(True, id_sl.mean(0), id_sl, torch.ones(8, 4, dtype=torch.bool))
    meter.update(False, ood_sl.mean(0), ood_sl, torch.ones(8, 4, dtype=torch.bool))
    table = meter.compute()
    assert list(table) == ["energy", "msp", "variance", "entropy"]
    assert table["variance"]["auroc"] == pytest.approx(1.0)
