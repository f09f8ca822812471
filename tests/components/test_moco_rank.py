"""moco_rank: FIFO queue, reference loss, momentum encoder over the pipeline's visual part."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clapkit.interfaces import BuildContext
from clapkit.pipeline import VisualPart

CTX = BuildContext(class_names=["a", "b", "c"], seed=3)


def test_queue_is_fifo_and_vectorised(make):
    loss = make("loss", "moco_rank", CTX, queue_size=5, dim=2, keys="text")
    keys = torch.arange(14, dtype=torch.float).view(7, 2)
    loss.enqueue(keys[:3], torch.tensor([0, 1, 2]))
    assert int(loss.queue_ptr) == 3
    assert torch.equal(loss.queue[:3], keys[:3])
    loss.enqueue(keys[3:7], torch.tensor([0, 0, 1, 1]))       # wraps: slots 3, 4, 0, 1
    assert int(loss.queue_ptr) == 2
    assert torch.equal(loss.queue, keys[[5, 6, 2, 3, 4]])
    assert loss.queue_labels.tolist() == [1, 1, 2, 0, 0]
    big = torch.arange(16, dtype=torch.float).view(8, 2) + 100
    loss.enqueue(big, torch.arange(8))                          # more than K: the last K stay
    assert sorted(loss.queue_labels.tolist()) == [3, 4, 5, 6, 7]
    assert int(loss.queue_ptr) == 2


def test_loss_matches_reference_with_same_class_masking(make):
    temp = 0.1
    loss = make("loss", "moco_rank", CTX, queue_size=4, dim=3, temperature=temp, keys="text")
    queue = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]), dim=-1)
    loss.queue, loss.queue_labels = queue.clone(), torch.tensor([0, 1, 2, -1])
    loss.eval()                                                 # no enqueue while checking
    z = torch.tensor([[1.0, 0.2, 0.1], [0.0, 1.0, 1.0]], requires_grad=True)
    text = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    y = torch.tensor([0, 2])
    value = loss({"z": z, "text": text}, {"label": y})
    zn, tn = F.normalize(z.detach(), dim=-1), F.normalize(text, dim=-1)
    want = 0.0
    for b in range(2):
        pos = float(zn[b] @ tn[y[b]]) / temp
        negs = [float(zn[b] @ queue[k]) / temp for k in range(4) if int(loss.queue_labels[k])
                != int(y[b])]
        want += -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs))
    assert abs(value.item() - want / 2) < 1e-4
    value.backward()
    assert z.grad.abs().sum() > 0
    assert int(loss.queue_ptr) == 0                             # eval mode: queue untouched
    # mixup: lam * L(y_a) + (1 - lam) * L(y_b)
    out = {"z": z.detach(), "text": text}
    yb = torch.tensor([1, 1])
    mixed = loss(out, {"label": y, "label_b": yb, "mix_lam": 0.4})
    torch.testing.assert_close(mixed, 0.4 * loss(out, {"label": y})
                               + 0.6 * loss(out, {"label": yb}))


def test_training_step_enqueues_text_keys(make):
    loss = make("loss", "moco_rank", CTX, queue_size=8, dim=4, keys="text").train()
    text = torch.randn(3, 4)
    y = torch.tensor([2, 0])
    value = loss({"z": torch.randn(2, 4, requires_grad=True), "text": text}, {"label": y})
    value.backward()                          # the queue was replaced out of place: fine
    assert torch.isfinite(value)
    torch.testing.assert_close(loss.queue[:2], F.normalize(text[y], dim=-1))
    assert loss.queue_labels[:2].tolist() == [2, 0]


class FakePipeline(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def visual_encoder_modules(self) -> nn.Module:
        return self.visual


@pytest.fixture
def visual(make, ctx):
    """The real visual part: temporal transformers per stream + concat_linear fusion."""
    torch.manual_seed(0)
    tt = nn.ModuleDict({s: make("adapter", "temporal_transformer", ctx, heads=2, dim_head=4)
                        for s in ctx.streams})
    fusion = make("adapter", "concat_linear", ctx)
    return VisualPart(nn.ModuleDict({"temporal": tt, "fusion": fusion}),
                      {"temporal": "video", "fusion": "fusion"}, ctx.streams)


def test_momentum_encoder_is_a_frozen_copy_updated_by_ema(make, ctx, visual):
    m = 0.9
    loss = make("loss", "moco_rank", ctx, queue_size=16, momentum=m, keys="momentum").train()
    assert set(loss.needs) == {"z", "text", "features"}
    loss.bind(FakePipeline(visual))
    assert list(loss.parameters()) == [], "the momentum copy must hold no parameters"
    names = {n for n, _ in visual.named_parameters()}
    assert names <= {n for n, _ in loss.momentum_encoder.named_buffers()}
    before = {n: b.clone() for n, b in loss.momentum_encoder.named_buffers()}
    with torch.no_grad():
        for p in visual.parameters():
            p.add_(1.0)
    feats = {s: torch.randn(4, ctx.num_frames, ctx.embed_dim) for s in ctx.streams}
    z = visual(feats)
    value = loss({"z": z, "text": torch.randn(4, ctx.embed_dim), "features": feats},
                 {"label": torch.tensor([0, 1, 2, 3])})
    value.backward()
    online = dict(visual.named_parameters())
    for n, b in loss.momentum_encoder.named_buffers():
        if n in online:
            torch.testing.assert_close(b, m * before[n] + (1 - m) * online[n].detach())
    with torch.no_grad():
        keys = F.normalize(loss.momentum_encoder.eval()(feats), dim=-1)
    torch.testing.assert_close(loss.queue[:4], keys)
    # the online visual part got gradients, the copy did not take part in autograd
    assert any(p.grad is not None for p in visual.parameters())


def test_queue_and_momentum_copy_checkpoint(make, ctx, visual):
    a = make("loss", "moco_rank", ctx, queue_size=8, keys="momentum").train()
    a.bind(FakePipeline(visual))
    feats = {s: torch.randn(3, ctx.num_frames, ctx.embed_dim) for s in ctx.streams}
    a({"z": visual(feats), "text": torch.randn(4, ctx.embed_dim), "features": feats},
      {"label": torch.tensor([0, 1, 1])})
    state = a.state_dict()
    assert {"queue", "queue_labels", "queue_ptr"} <= set(state)
    assert any(k.startswith("momentum_encoder.") for k in state)
    b = make("loss", "moco_rank", ctx, queue_size=8, keys="momentum")
    b.bind(FakePipeline(visual))
    b.load_state_dict(state)
    assert torch.equal(b.queue, a.queue) and int(b.queue_ptr) == 3
    assert b.queue_labels[:3].tolist() == [0, 1, 1]


def test_defaults_follow_seed_003():
    """Seed 003: LDL warms up on hard labels for 5 epochs; MoCo's queue holds old text
    features (4096 of them)."""
    from clapkit_plugins.losses.moco_rank import MoCoRankConfig
    from clapkit_plugins.losses.semantic_ldl import SemanticLDLConfig
    assert SemanticLDLConfig().warmup_epochs == 5
    cfg = MoCoRankConfig()
    assert cfg.keys == "text" and cfg.queue_size == 4096


def test_default_keys_enqueue_the_positive_text(make):
    loss = make("loss", "moco_rank", CTX, queue_size=6, dim=3).train()
    text = F.normalize(torch.randn(3, 3), dim=-1)
    z = torch.randn(2, 3, requires_grad=True)
    loss({"z": z, "text": text}, {"label": torch.tensor([2, 0])})
    torch.testing.assert_close(loss.queue[:2], text[[2, 0]])
    assert loss.momentum_encoder is None


def test_runs_in_bfloat16(make):
    loss = make("loss", "moco_rank", CTX, queue_size=8, dim=4).to(torch.bfloat16).train()
    z = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    out = loss({"z": z, "text": torch.randn(3, 4, dtype=torch.bfloat16)},
               {"label": torch.tensor([0, 1, 2])})
    out.backward()
    assert torch.isfinite(out) and z.grad is not None and loss.queue.dtype == torch.bfloat16
