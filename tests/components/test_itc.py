"""ITC: equals open_clip's ClipLoss, several captions per image, momentum EMA, queue and
soft targets rebuilt by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from clapkit_plugins.losses.itc import (ItcObjective, MomentumCopy, contrastive_targets,
                                        id_codes, itc_loss, ramped_alpha)


def _feats(b=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def test_plain_itc_equals_open_clip_clip_loss():
    v, t = _feats()
    scale = torch.tensor(14.3)
    want = ClipLoss()(F.normalize(v, dim=-1), F.normalize(t, dim=-1), scale)
    assert torch.allclose(itc_loss(v, t, scale), want, atol=1e-6)
    # the objective without momentum or queue is the same loss
    assert torch.allclose(ItcObjective(8)(v, t, torch.arange(6), scale), want, atol=1e-6)


def test_logit_scale_is_clamped_at_100_as_open_clip_trains():
    v, t = _feats()
    assert torch.allclose(itc_loss(v, t, 1000.0), itc_loss(v, t, 100.0))


def test_captions_of_one_image_are_all_positives():
    v, t = _feats(4)
    ids = torch.tensor([0, 0, 1, 2])                 # rows 0 and 1 describe the same image
    got = itc_loss(v, t, 10.0, ids, ids)
    logits = 10.0 * F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T
    target = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.]])
    want = 0.5 * (-(logits.log_softmax(1) * target).sum(1).mean()
                  - (logits.T.log_softmax(1) * target).sum(1).mean())
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, itc_loss(v, t, 10.0), atol=1e-3)


def test_id_codes_are_stable_and_equal_for_equal_ids():
    a = id_codes(["img1", "img2", "img1", 7])
    assert a[0] == a[2] and a[0] != a[1] and int(a[3]) == 7
    assert torch.equal(a, id_codes(["img1", "img2", "img1", 7]))


def test_targets_refuse_a_row_without_positive():
    with pytest.raises(ValueError, match="no positive"):
        contrastive_targets(torch.tensor([5]), torch.tensor([1, 2]))


def test_alpha_ramps_over_the_first_epoch():
    assert ramped_alpha(0.4, 0, 0.0) == 0.0
    assert ramped_alpha(0.4, 0, 0.5) == pytest.approx(0.2)
    assert ramped_alpha(0.4, 0, 1.5) == pytest.approx(0.4)
    assert ramped_alpha(0.4, 3, 0.0) == pytest.approx(0.4)


def test_momentum_copy_is_an_ema_held_in_buffers():
    online = torch.nn.Linear(3, 2)
    m = MomentumCopy(online, momentum=0.995)
    assert not list(m.parameters())               # nothing for an optimizer to train
    before = m.model.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    m.update()
    want = 0.995 * before + 0.005 * online.weight.detach()
    assert torch.allclose(m.model.weight, want, atol=1e-7)
    assert "model.weight" in m.state_dict()       # checkpoints with the model


def test_soft_targets_and_queue_rebuilt_by_hand():
    v, t = _feats(3, 4, seed=1)
    vm, tm = _feats(3, 4, seed=2)
    ids = torch.tensor([10, 11, 10])
    obj = ItcObjective(4, queue_size=5).train()
    qv, qt, qids = obj.queue_image.clone(), obj.queue_text.clone(), obj.queue_ids.clone()
    qids[1] = 11                                   # a queue entry of the same image as row 1
    obj.queue_ids.copy_(qids)
    got = obj(v, t, ids, 5.0, vm, tm, alpha=0.4)

    n = lambda x: F.normalize(x, dim=-1)                                     # noqa: E731
    all_v, all_t = torch.cat([n(vm), qv]), torch.cat([n(tm), qt])
    all_ids = torch.cat([ids, qids])
    pos = (ids[:, None] == all_ids[None]).float()
    hard = pos / pos.sum(1, keepdim=True)
    tgt_i2t = 0.4 * (5.0 * n(vm) @ all_t.T).softmax(1) + 0.6 * hard
    tgt_t2i = 0.4 * (5.0 * n(tm) @ all_v.T).softmax(1) + 0.6 * hard
    li2t = -((5.0 * n(v) @ all_t.T).log_softmax(1) * tgt_i2t).sum(1).mean()
    lt2i = -((5.0 * n(t) @ all_v.T).log_softmax(1) * tgt_t2i).sum(1).mean()
    assert torch.allclose(got, (li2t + lt2i) / 2, atol=1e-6)
    # the batch's momentum keys went into the 3 oldest slots, the pointer moved on
    assert torch.allclose(obj.queue_image[:3], n(vm)) and torch.allclose(obj.queue_text[:3], n(tm))
    assert obj.queue_ids[:3].tolist() == [10, 11, 10] and int(obj.queue_ptr) == 3
    assert torch.equal(obj.queue_image[3:], qv[3:])


def test_queue_wraps_and_survives_a_state_dict_round_trip():
    obj = ItcObjective(4, queue_size=4).train()
    for step in range(3):                          # 3 batches of 3 rows through 4 slots
        v, t = _feats(3, 4, seed=step)
        obj(v.requires_grad_(), t, torch.tensor([3 * step, 3 * step + 1, 3 * step + 2]), 5.0)
    assert int(obj.queue_ptr) == 9 % 4
    assert sorted(obj.queue_ids.tolist()) == [5, 6, 7, 8]
    fresh = ItcObjective(4, queue_size=4, seed=9)
    fresh.load_state_dict(obj.state_dict())
    for k, val in obj.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], val), k


def test_eval_mode_leaves_the_queue_alone():
    obj = ItcObjective(4, queue_size=4).eval()
    before = obj.queue_image.clone()
    v, t = _feats(2, 4)
    obj(v, t, torch.tensor([0, 1]), 5.0)
    assert torch.equal(obj.queue_image, before) and int(obj.queue_ptr) == 0


def test_soft_targets_without_momentum_features_are_refused():
    v, t = _feats(2, 4)
    with pytest.raises(ValueError, match="momentum"):
        ItcObjective(4)(v, t, torch.tensor([0, 1]), 5.0, alpha=0.4)


def test_gradient_reaches_both_towers_features():
    v, t = _feats(4, 4)
    v.requires_grad_(); t.requires_grad_()
    vm, tm = _feats(4, 4, seed=3)
    ItcObjective(4, queue_size=8).train()(v, t, torch.arange(4), 5.0, vm, tm, 0.4).backward()
    assert v.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
