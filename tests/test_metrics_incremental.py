"""Incremental metrics against hand-computed matrices: forgetting, BWT, task-aware accuracy,
streaming ECE, and the accuracy-matrix state round-trip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clapkit.metrics import (AccuracyMatrix, CalibrationMeter, TaskAwareMeter,
                             expected_calibration_error, task_aware_predictions)

# A 4-task matrix computed by hand (rows: after task t; columns: task j).
R = [[0.90],
     [0.60, 0.80],
     [0.70, 0.50, 0.95],
     [0.40, 0.55, 0.60, 0.85]]
SEEN = [0.90, 0.70, 0.72, 0.60]


def _matrix() -> AccuracyMatrix:
    m = AccuracyMatrix()
    for t, (row, seen) in enumerate(zip(R, SEEN)):
        m.update(t, row, seen, task_aware=0.95 - 0.05 * t, ece=0.1 * (t + 1))
    return m


def test_four_task_matrix_by_hand():
    m = _matrix()
    assert m.average_incremental_accuracy() == pytest.approx((0.90 + 0.70 + 0.72 + 0.60) / 4)
    assert m.last_accuracy() == pytest.approx(0.60)
    # forgetting: j=0 max(0.9, 0.6, 0.7) - 0.4 = 0.5; j=1 max(0.8, 0.5) - 0.55 = 0.25;
    # j=2 0.95 - 0.60 = 0.35 -> mean 1.1 / 3
    assert m.forgetting() == pytest.approx(1.1 / 3)
    # BWT: (0.4 - 0.9) + (0.55 - 0.8) + (0.6 - 0.95) = -1.1 -> / 3
    assert m.bwt() == pytest.approx(-1.1 / 3)
    s = m.summary()
    assert s["avg_task_aware_acc"] == pytest.approx((0.95 + 0.90 + 0.85 + 0.80) / 4)
    assert s["last_task_aware_acc"] == pytest.approx(0.80)
    assert s["last_ece"] == pytest.approx(0.4)


def test_bwt_differs_from_forgetting_when_a_task_improves_later():
    m = AccuracyMatrix()
    m.update(0, [0.5], 0.5)
    m.update(1, [0.9, 0.7], 0.8)     # task 0 got better (positive transfer)
    m.update(2, [0.8, 0.7, 0.6], 0.7)
    # forgetting measures from the best: (0.9 - 0.8 + 0.7 - 0.7) / 2 = 0.05
    assert m.forgetting() == pytest.approx(0.05)
    # BWT measures from when learned: (0.8 - 0.5 + 0.7 - 0.7) / 2 = +0.15
    assert m.bwt() == pytest.approx(0.15)


def test_summary_without_optional_rows_and_json_roundtrip():
    m = AccuracyMatrix()
    m.update(0, [0.8], 0.8)
    m.update(1, [0.6, 0.7], 0.65)
    s = m.summary()
    assert set(s) == {"avg_incremental_acc", "last_acc", "forgetting", "bwt"}
    full = _matrix()
    # NaN/None survive JSON (the runner writes NaN as null)
    text = json.dumps(full.to_dict())
    back = AccuracyMatrix.from_dict(json.loads(text))
    assert back == full and back.summary() == pytest.approx(full.summary())
    nulls = {"rows": [[0.5]], "acc_seen": [0.5], "task_aware": [None], "ece": [None]}
    assert AccuracyMatrix.from_dict(nulls).summary()["last_acc"] == 0.5
    # states written before task-aware/ECE existed still load
    old = AccuracyMatrix.from_dict({"rows": R, "acc_seen": SEEN})
    assert old.rows == R and math.isnan(old.task_aware[0])
    with pytest.raises(ValueError, match="'ece' entries"):
        AccuracyMatrix.from_dict({"rows": [[0.5]], "acc_seen": [0.5], "ece": [0.1, 0.2]})


def test_reevaluating_a_row_replaces_every_column():
    m = AccuracyMatrix()
    m.update(0, [0.8], 0.8, task_aware=0.9, ece=0.2)
    m.update(0, [0.7], 0.7, task_aware=0.85, ece=0.1)
    assert m.rows == [[0.7]] and m.acc_seen == [0.7]
    assert m.task_aware == [0.85] and m.ece == [0.1]


# --- task-aware accuracy ----------------------------------------------------------------------

TASKS = [0, 0, 1, 1, 2, 2]           # 3 tasks x 2 classes


def test_task_aware_predictions_by_hand():
    logits = torch.tensor([
        [0.1, 0.2, 5.0, 0.0, 0.0, 0.0],   # label 0: CIL pred 2 (wrong), TA pred 1 (wrong)
        [0.3, 0.2, 5.0, 0.0, 0.0, 0.0],   # label 0: CIL wrong, TA pred 0 (right)
        [0.0, 0.0, 0.1, 0.9, 0.0, 3.0],   # label 3: CIL pred 5 (wrong), TA pred 3 (right)
        [0.0, 0.0, 0.0, 0.0, 2.0, 1.0],   # label 4: right both ways
    ])
    labels = torch.tensor([0, 0, 3, 4])
    assert task_aware_predictions(logits, labels, TASKS).tolist() == [1, 0, 3, 4]
    meter = TaskAwareMeter(TASKS)
    meter.update(logits[:2], labels[:2])
    meter.update(logits[2:], labels[2:])
    assert meter.accuracy() == pytest.approx(3 / 4)
    pt = meter.per_task()
    assert pt[0] == pytest.approx(0.5) and pt[1] == 1.0 and pt[2] == 1.0


def test_task_aware_with_seen_columns_only_and_unseen_inf():
    # after task 1: logits cover the 4 seen classes; the engine may also send -inf columns
    logits = torch.tensor([[1.0, 0.0, 9.0, 0.0], [0.0, 1.0, 0.0, 2.0]])
    labels = torch.tensor([0, 3])
    assert task_aware_predictions(logits, labels, TASKS).tolist() == [0, 3]
    padded = torch.cat([logits, torch.full((2, 2), -math.inf)], dim=1)
    assert task_aware_predictions(padded, labels, TASKS).tolist() == [0, 3]
    with pytest.raises(ValueError, match="only 6"):
        task_aware_predictions(torch.zeros(1, 7), torch.tensor([0]), TASKS)


def test_task_aware_is_at_least_class_incremental_accuracy():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(300, 6, generator=g)
    labels = torch.randint(0, 6, (300,), generator=g)
    meter = TaskAwareMeter(TASKS)
    meter.update(logits, labels)
    cil = float((logits.argmax(1) == labels).double().mean())
    # reference: a loop over items
    ref = 0
    for x, y in zip(logits, labels):
        cands = [c for c in range(6) if TASKS[c] == TASKS[int(y)]]
        ref += int(max(cands, key=lambda c: float(x[c])) == int(y))
    assert meter.accuracy() == pytest.approx(ref / 300)
    assert meter.accuracy() >= cil
    # the state sums like a DDP all_reduce
    a, b = TaskAwareMeter(TASKS), TaskAwareMeter(TASKS)
    a.update(logits[:100], labels[:100])
    b.update(logits[100:], labels[100:])
    assert torch.equal(a.counts + b.counts, meter.counts)


# --- streaming ECE --------------------------------------------------------------------------

def test_calibration_meter_matches_one_shot_ece():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(250, 5, generator=g) * 3
    labels = torch.randint(0, 5, (250,), generator=g)
    meter = CalibrationMeter(n_bins=10)
    for i in range(0, 250, 64):
        meter.update(logits[i:i + 64], labels[i:i + 64])
    ref = expected_calibration_error(torch.softmax(logits.double(), 1), labels, n_bins=10)
    assert meter.compute() == pytest.approx(ref, abs=1e-12)
    # -inf columns (unseen classes) get probability 0 and change nothing
    padded = torch.cat([logits, torch.full((250, 3), -math.inf)], dim=1)
    m2 = CalibrationMeter(n_bins=10)
    m2.update(padded, labels)
    assert m2.compute() == pytest.approx(ref, abs=1e-12)
    assert math.isnan(CalibrationMeter().compute())
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationMeter(0)
