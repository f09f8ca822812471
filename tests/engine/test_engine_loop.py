"""The epoch loop: mixup wiring, loss schedules, AMP on CPU, gradient clipping, sampling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import engine_standins as es
from clapkit.engine import loop
from clapkit.engine.distributed import DistInfo
from clapkit.engine.loop import StepConfig, mix_batch, train_epoch
from clapkit.engine.runner import run_recipe
from clapkit.engine.sampling import EpochSampler, inverse_frequency_weights
from clapkit.sections import LossKeys

LOGGED = es.BASE_RECIPE + '\n[log.jsonl]\nplugin = "jsonl"\n'


def _epochs(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"] for r in rows if r["event"] == "epoch_end"]


# --- mixup ------------------------------------------------------------------------------------

def test_mix_batch_mixes_features_and_sets_the_second_labels():
    g = torch.Generator().manual_seed(0)
    feats = {"face": torch.randn(6, 2, 4), "context": torch.randn(6, 2, 4)}
    batch = {"label": torch.arange(6), "features": feats}
    out = mix_batch(batch, 0.4, np.random.default_rng(0), g)
    lam = out["mix_lam"]
    assert 0.0 <= lam <= 1.0
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["label_b"], perm)
    for s in feats:
        assert torch.allclose(out["features"][s], lam * feats[s] + (1 - lam) * feats[s][perm])
    pix = mix_batch({"label": torch.arange(6), "streams": {"image": torch.ones(6, 1, 3, 2, 2)}},
                    0.4, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert "features" not in pix and pix["streams"]["image"].shape == (6, 1, 3, 2, 2)


def test_mixup_alpha_reaches_the_loop_and_changes_the_loss(tmp_path, monkeypatch):
    calls = []
    orig = loop.mix_batch

    def spy(batch, alpha, rng, gen):
        out = orig(batch, alpha, rng, gen)
        calls.append((alpha, out["mix_lam"], "features" in out and out["features"] is not None))
        return out
    monkeypatch.setattr(loop, "mix_batch", spy)
    path = es.write_recipe(tmp_path, LOGGED)
    over = es.base_overrides(tmp_path)
    run_recipe(path, overrides=over, out_dir=tmp_path / "plain")
    assert calls == []
    run_recipe(path, overrides=over + ["run.mixup_alpha=0.4"], out_dir=tmp_path / "mixed")
    assert calls and all(a == 0.4 and f for a, _, f in calls)     # cached features mixed
    assert len({round(lam, 6) for _, lam, _ in calls}) > 1
    plain, mixed = _epochs(tmp_path / "plain"), _epochs(tmp_path / "mixed")
    assert mixed[0]["loss/ce"] != pytest.approx(plain[0]["loss/ce"], rel=1e-3)


# --- loss schedules ------------------------------------------------------------------------------

def test_loss_weight_warmup_and_ramp():
    k = LossKeys(weight=2.0, warmup=2, ramp=4)
    assert [k.weight_at(e) for e in range(8)] == [0, 0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert LossKeys(weight=0.3).weight_at(0) == 0.3


def test_loss_schedule_applies_per_stage_epoch(tmp_path):
    text = (LOGGED.replace("epochs = 2", "epochs = 3")
            + '\n[losses.reg]\nplugin = "t_text_l2"\nweight = 0.5\nwarmup = 1\nramp = 2\n')
    path = es.write_recipe(tmp_path, text)
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
    ep = _epochs(tmp_path / "out")
    weights = [0.0, 0.25, 0.5] * 2                      # restarts with each stage
    for m, w in zip(ep, weights):
        if w == 0.0:
            assert m["loss/reg"] == 0.0                   # not computed in warmup
        assert m["loss/total"] == pytest.approx(m["loss/ce"] + w * m["loss/reg"], rel=1e-5)
    assert all(m["loss/reg"] > 0 for m, w in zip(ep, weights) if w > 0)


# --- AMP -----------------------------------------------------------------------------------------

def test_amp_runs_on_cpu_in_bfloat16(tmp_path, monkeypatch):
    dtypes = []
    orig = es.CE.forward

    def spy(self, outputs, batch):
        dtypes.append(outputs["logits"].dtype)
        return orig(self, outputs, batch)
    monkeypatch.setattr(es.CE, "forward", spy)
    path = es.write_recipe(tmp_path)
    s = run_recipe(path, overrides=es.base_overrides(tmp_path) + ["run.use_amp=true",
                                                                    'run.device="cpu"'],
                   out_dir=tmp_path / "out")
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert math.isfinite(s["final/valid_uar"])
    dtypes.clear()
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "fp32")
    assert dtypes and all(d == torch.float32 for d in dtypes)


# --- gradient clipping -----------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def backbone_trainable(self) -> bool:
        return True

    def forward(self, batch):
        return {"logits": self.lin(batch["features"]["image"].mean(1))}

    def compute_losses(self, outputs, batch, epoch):
        total = 1000.0 * nn.functional.cross_entropy(outputs["logits"], batch["label"])
        return total, {"ce": float(total.detach()), "total": float(total.detach())}


class RecordingSGD(torch.optim.SGD):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.norms = []

    def step(self, closure=None):
        g = torch.cat([p.grad.flatten() for grp in self.param_groups for p in grp["params"]])
        self.norms.append(float(g.norm()))
        return super().step(closure)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_grad_clip_bounds_the_gradient_norm(clip):
    torch.manual_seed(0)
    model = Tiny()
    batches = [{"label": torch.randint(0, 3, (5,)), "index": torch.arange(5),
                "features": {"image": torch.randn(5, 2, 4) * 10}} for _ in range(4)]
    opt = RecordingSGD(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = StepConfig(device=torch.device("cpu"), remap=torch.arange(3),
                     task_of_class=torch.zeros(3, dtype=torch.long), num_classes=3,
                     grad_clip=clip)
    stats = train_epoch(model, model, batches, opt, sched, None, 0, cfg, DistInfo())
    assert stats.grad_norm > 0.5                       # pre-clip norm is reported
    if clip:
        assert max(opt.norms) <= clip + 1e-5
    else:
        assert max(opt.norms) > 0.5


# --- sampling -------------------------------------------------------------------------------------

def test_weighted_sampler_draws_minority_classes_more():
    labels = [0] * 90 + [1] * 10
    idx = list(range(100))
    plain = EpochSampler(idx, shuffle=True, seed=1)
    weighted = EpochSampler(idx, shuffle=True, weights=inverse_frequency_weights(labels), seed=1)
    minority = []
    for s in (plain, weighted):
        drawn = []
        for e in range(5):
            s.set_epoch(e)
            drawn += list(s)
        minority.append(sum(labels[i] == 1 for i in drawn) / len(drawn))
    assert minority[0] == pytest.approx(0.1)
    assert 0.4 < minority[1] < 0.6


def test_sampler_is_seeded_per_epoch_and_shards_cover_the_epoch():
    s = EpochSampler(range(10), shuffle=True, seed=3)
    s.set_epoch(2)
    a = list(s)
    s.set_epoch(3)
    assert list(s) != a
    s.set_epoch(2)
    assert list(s) == a and sorted(a) == list(range(10))
    shards = [EpochSampler(range(10), shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sh in shards:
        sh.set_epoch(2)
    assert sorted(list(shards[0]) + list(shards[1])) == list(range(10))
    assert list(shards[0]) == a[0::2]
    ev = [EpochSampler(range(7), rank=r, world_size=2, pad=False) for r in (0, 1)]
    assert sorted(list(ev[0]) + list(ev[1])) == list(range(7)) and len(ev[0]) == 4


def test_weighted_sampler_key_reaches_the_loader(tmp_path, monkeypatch):
    seen = []
    orig = EpochSampler.__init__

    def spy(self, indices, **kw):
        seen.append(kw.get("weights") is not None)
        orig(self, indices, **kw)
    monkeypatch.setattr(EpochSampler, "__init__", spy)
    path = es.write_recipe(tmp_path)
    run_recipe(path, overrides=es.base_overrides(tmp_path) + ["data.weighted_sampler=true"],
               out_dir=tmp_path / "out")
    assert any(seen)


# --- data.augment and stages that cannot train -------------------------------------------------

def test_augment_switches_the_training_pipeline(tmp_path, monkeypatch):
    from clapkit.data.base import ClipDataset
    modes = []
    orig = ClipDataset.__init__

    def spy(self, source, split, transform, train, **kw):
        modes.append((split, train))
        orig(self, source, split, transform, train, **kw)
    monkeypatch.setattr(ClipDataset, "__init__", spy)
    path = es.write_recipe(tmp_path)
    over = es.base_overrides(tmp_path) + ['cache.enabled="off"']
    run_recipe(path, overrides=over, out_dir=tmp_path / "a")
    assert ("train", True) in modes
    modes.clear()
    run_recipe(path, overrides=over + ["data.augment=false"], out_dir=tmp_path / "b")
    assert ("train", True) not in modes and ("train", False) in modes
    from clapkit.errors import RecipeError
    with pytest.raises(RecipeError, match="augment"):
        run_recipe(path, overrides=es.base_overrides(tmp_path) + ["data.augment=false",
                                                                  "cache.views=2"],
                   out_dir=tmp_path / "c")


def test_a_stage_whose_loss_never_reaches_its_parameters_is_an_error(tmp_path):
    from clapkit.errors import ClapkitError
    text = es.BASE_RECIPE.replace("[losses.ce]\nplugin = \"t_ce\"",
                                  "[losses.ce]\nplugin = \"t_ce\"\nwarmup = 5")
    path = es.write_recipe(tmp_path, text)
    with pytest.raises(ClapkitError, match="trained nothing"):
        run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
