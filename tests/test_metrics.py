"""clapkit.metrics against hand-computed values and brute-force references."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clapkit.metrics import (AccuracyMatrix, ClassificationMeter, aupr, auroc,
                             confusion_matrix, expected_calibration_error, fpr95, fpr_at_tpr,
                             per_class_accuracy, task_accuracy, uar, war)

# 3 classes; class 2 never occurs in the targets.
PREDS = torch.tensor([0, 0, 1, 1, 1, 0, 2])
TARGETS = torch.tensor([0, 0, 0, 1, 1, 1, 1])


def test_confusion_matrix_rows_true_cols_pred():
    conf = confusion_matrix(PREDS, TARGETS, 3)
    assert conf.tolist() == [[2, 1, 0], [1, 2, 1], [0, 0, 0]]
    assert conf.dtype == torch.long


def test_war_uar_per_class_by_hand():
    conf = confusion_matrix(PREDS, TARGETS, 3)
    assert war(conf) == pytest.approx(4 / 7)
    pc = per_class_accuracy(conf)
    assert pc[:2].tolist() == pytest.approx([2 / 3, 2 / 4])
    assert math.isnan(pc[2])                         # absent class
    assert uar(conf) == pytest.approx((2 / 3 + 1 / 2) / 2)   # absent class left out
    empty = torch.zeros(3, 3, dtype=torch.long)
    assert math.isnan(war(empty)) and math.isnan(uar(empty))


def test_confusion_from_logits_and_bad_input():
    logits = torch.nn.functional.one_hot(PREDS, 3).float() * 5 - 1
    assert torch.equal(confusion_matrix(logits, TARGETS, 3), confusion_matrix(PREDS, TARGETS, 3))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 3)


def test_task_accuracy_by_hand():
    # classes 0,1 -> task 0; class 2,3 -> task 1
    conf = torch.tensor([[3, 1, 0, 0], [0, 2, 2, 0], [0, 0, 4, 0], [1, 0, 0, 1]])
    acc = task_accuracy(conf, [0, 0, 1, 1])
    assert acc.tolist() == pytest.approx([5 / 8, 5 / 6])
    acc3 = task_accuracy(conf, [0, 0, 1, 1], num_tasks=3)
    assert math.isnan(acc3[2])


def test_meter_streaming_equals_one_shot_and_merges():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, 5, generator=g)
    labels = torch.randint(0, 5, (100,), generator=g)
    meter = ClassificationMeter(5)
    for chunk in range(0, 100, 17):
        meter.update(logits[chunk:chunk + 17], labels[chunk:chunk + 17])
    ref = confusion_matrix(logits.argmax(1), labels, 5)
    assert torch.equal(meter.confusion, ref)
    out = meter.compute()
    assert out["war"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    assert out["uar"] == pytest.approx(uar(ref))
    assert out["confusion"] == ref.tolist()
    # two "ranks" each seeing half: summing their single state tensor gives the whole
    a, b = ClassificationMeter(5), ClassificationMeter(5)
    a.update(logits[:50], labels[:50])
    b.update(logits[50:].argmax(1), labels[50:])
    a.merge(b)
    assert torch.equal(a.confusion, ref)
    a.reset()
    assert a.count == 0
    # logits over the classes seen so far only (fewer columns than classes)
    c = ClassificationMeter(5)
    c.update(logits[:, :3], labels)
    assert c.confusion[:, 3:].sum() == 0 and c.count == 100


def test_accuracy_matrix_by_hand_and_roundtrip():
    m = AccuracyMatrix()
    m.update(0, [0.9], 0.9)
    m.update(1, [0.7, 0.8], 0.75)
    m.update(2, [0.6, 0.7, 0.85], 0.65)
    assert m.average_incremental_accuracy() == pytest.approx((0.9 + 0.75 + 0.65) / 3)
    assert m.last_accuracy() == pytest.approx(0.65)
    # j=0: max(0.9, 0.7) - 0.6 = 0.3; j=1: 0.8 - 0.7 = 0.1
    assert m.forgetting() == pytest.approx(0.2)
    # (0.6 - 0.9 + 0.7 - 0.8) / 2
    assert m.bwt() == pytest.approx(-0.2)
    r = m.as_tensor()
    assert r.shape == (3, 3) and math.isnan(r[0, 1]) and r[2, 1] == pytest.approx(0.7)
    back = AccuracyMatrix.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m and back.summary() == pytest.approx(m.summary())
    # forgetting uses the best earlier value, not the first one
    m2 = AccuracyMatrix.from_dict({"rows": [[0.5], [0.9, 0.4], [0.6, 0.4, 0.3]],
                                   "acc_seen": [0.5, 0.6, 0.4]})
    assert m2.forgetting() == pytest.approx(((0.9 - 0.6) + (0.4 - 0.4)) / 2)


def test_accuracy_matrix_edges():
    m = AccuracyMatrix()
    assert math.isnan(m.last_accuracy())
    m.update(0, [0.8], 0.8)
    assert m.forgetting() == 0.0 and m.bwt() == 0.0
    m.update(0, [0.85], 0.85)                     # re-evaluation replaces the row
    assert m.rows == [[0.85]]
    with pytest.raises(ValueError, match="in order"):
        m.update(2, [0.1, 0.2, 0.3], 0.2)
    with pytest.raises(ValueError, match="needs 2"):
        m.update(1, [0.1], 0.1)


# --- ranking metrics: brute-force references -----------------------------------------------

def _ref_auroc(s, y):
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _ref_curve(s, y):
    """(tpr, fpr, precision) at each distinct threshold from high to low, predict s >= thr."""
    pts = []
    n_pos, n_neg = sum(y), len(y) - sum(y)
    for thr in sorted(set(s), reverse=True):
        tp = sum(1 for a, b in zip(s, y) if a >= thr and b)
        fp = sum(1 for a, b in zip(s, y) if a >= thr and not b)
        pts.append((tp / n_pos, fp / n_neg, tp / (tp + fp)))
    return pts


def _ref_ap(s, y):
    ap, prev_r = 0.0, 0.0
    for r, _, p in _ref_curve(s, y):
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def _ref_fpr95(s, y):
    return min(f for r, f, _ in _ref_curve(s, y) if r >= 0.95)


def test_ranking_metrics_by_hand():
    s, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert auroc(s, y) == pytest.approx(0.75)
    assert aupr(s, y) == pytest.approx((0.5 * 1.0) + (0.5 * 2 / 3))
    assert fpr95(s, y) == pytest.approx(0.5)
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0 and fpr95([1, 2, 3, 4], [0, 0, 1, 1]) == 0.0
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5       # all tied
    assert math.isnan(auroc([1, 2], [1, 1]))
    with pytest.raises(ValueError, match="binary"):
        auroc([1, 2], [0, 2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ranking_metrics_vs_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    y = torch.randint(0, 2, (n,), generator=g)
    s = torch.randint(0, 8, (n,), generator=g).float() + 0.7 * y   # many ties, some signal
    sl, yl = s.tolist(), y.tolist()
    assert auroc(s, y) == pytest.approx(_ref_auroc(sl, yl), abs=1e-12)
    assert aupr(s, y) == pytest.approx(_ref_ap(sl, yl), abs=1e-12)
    assert fpr95(s, y) == pytest.approx(_ref_fpr95(sl, yl), abs=1e-12)
    assert fpr_at_tpr(s, y, 0.5) == pytest.approx(
        min(f for r, f, _ in _ref_curve(sl, yl) if r >= 0.5), abs=1e-12)


# --- calibration ------------------------------------------------------------------------------

def test_ece_by_hand():
    # confidences 0.9 (correct), 0.8 (wrong), 0.3 (correct), 0.4 (wrong) with 2 bins:
    # bin (0.5,1]: conf mean 0.85, acc 0.5 -> 2/4 * 0.35; bin (0,0.5]: 0.35 vs 0.5 -> 2/4 * 0.15
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.3, 0.25, 0.25], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(
        0.5 * 0.35 + 0.5 * 0.15)


def test_ece_vs_loop_reference():
    g = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(200, 4, generator=g) * 2, dim=1)
    labels = torch.randint(0, 4, (200,), generator=g)
    conf, pred = probs.max(1)
    ref = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inb = [(c, p == t) for c, p, t in zip(conf.tolist(), pred.tolist(), labels.tolist())
               if (lo < c <= hi) or (b == 0 and c == 0)]
        if inb:
            acc = sum(ok for _, ok in inb) / len(inb)
            cm = sum(c for c, _ in inb) / len(inb)
            ref += len(inb) / 200 * abs(acc - cm)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(ref)
    perfect = torch.eye(3)
    assert expected_calibration_error(perfect, torch.arange(3)) == pytest.approx(0.0)
