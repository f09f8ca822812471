"""Stage set-up: glob selection, real freezing, optimizer groups, lr schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import engine_standins as es
from clapkit import hookimpl
from clapkit.engine.runner import run_recipe
from clapkit.engine.stages import (apply_freezing, build_optimizer, build_scheduler, check_stage,
                                   glob_matches, lr_factor, param_groups, select_parameters)
from clapkit.errors import ClapkitError, RecipeError
from clapkit.plugins import get_plugin_host
from clapkit.sections import StageConfig


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.prompts = nn.ModuleDict({"soft": nn.Linear(3, 3)})
        self.adapters = nn.ModuleDict({"eaa": nn.Linear(3, 3), "temporal": nn.Linear(3, 3)})
        self.head = nn.Linear(3, 2)


def test_glob_matches_subtrees_and_wildcards():
    assert glob_matches("prompts.*", "prompts.soft.weight")
    assert glob_matches("head", "head.weight")
    assert not glob_matches("head", "headx.weight")
    assert glob_matches("adapters.*.bias", "adapters.eaa.bias")
    assert not glob_matches("adapters.eaa", "adapters.temporal.weight")


def test_freezing_is_real_and_frozen_params_are_not_in_the_optimizer():
    torch.manual_seed(0)
    m = Toy()
    stage = StageConfig(name="s", train=["adapters.*"], lr=0.1, weight_decay=0.5,
                        lr_groups={"adapters.eaa.*": 0.5})
    params = select_parameters(m, stage)
    apply_freezing(m, params)
    groups = param_groups(params, stage)
    opt = build_optimizer(groups, stage)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for n, p in m.named_parameters():
        assert p.requires_grad == n.startswith("adapters.")
        assert (id(p) in in_opt) == n.startswith("adapters.")
    assert sorted(g["lr"] for g in opt.param_groups) == [0.1, 0.5]
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss = sum(p.sum() for p in m.parameters())     # would move every parameter
    loss.backward()
    opt.step()
    for n, p in m.named_parameters():
        same = torch.equal(p, before[n])
        assert same != n.startswith("adapters."), n


def test_glob_that_selects_nothing_is_an_error():
    with pytest.raises(RecipeError, match="selects no parameter"):
        select_parameters(Toy(), StageConfig(name="s", train=["adapter.*"]))
    with pytest.raises(RecipeError, match="lr_groups"):
        param_groups(select_parameters(Toy(), StageConfig(name="s", train=["head"])),
                     StageConfig(name="s", train=["head"], lr_groups={"prompts.*": 1.0}))


def test_cosine_with_warmup_and_multistep_schedules():
    cos = StageConfig(name="s", train=["x"], epochs=4, scheduler="cosine", warmup_epochs=1)
    f = [lr_factor(s, cos, 10) for s in range(40)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    ms = StageConfig(name="s", train=["x"], epochs=6, scheduler="multistep",
                     milestones=[2, 4], gamma=0.5)
    assert [lr_factor(e * 3, ms, 3) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    m = Toy()
    opt = build_optimizer([{"params": list(m.parameters()), "lr": 1.0}], cos)
    sched = build_scheduler(opt, cos, 10)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[11] == pytest.approx(f[11])


class Snapshots:
    """Copies of the model's parameters at every stage start and end."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.opt_ids: dict[str, set[int]] = {}
        self.names: dict[str, list[str]] = {}

    def _snap(self, run):
        return {n: p.detach().clone() for n, p in run.model.named_parameters()}

    @hookimpl
    def clapkit_stage_start(self, run, task, stage, trainable):
        self.at[(stage, "start")] = self._snap(run)
        self.names[stage] = list(trainable)
        self.opt_ids[stage] = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
        self.requires = {n for n, p in run.model.named_parameters() if p.requires_grad}

    @hookimpl
    def clapkit_stage_end(self, run, task, stage):
        self.at[(stage, "end")] = self._snap(run)


def test_staged_run_freezes_what_a_stage_does_not_train(tmp_path):
    host = get_plugin_host()
    snaps = Snapshots()
    host.register_listener(snaps)
    path = es.write_recipe(tmp_path)
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out",
               host=host)
    for stage, prefix in (("prompt", "prompts."), ("adapter", "adapters.")):
        start, end = snaps.at[(stage, "start")], snaps.at[(stage, "end")]
        assert snaps.names[stage] and all(n.startswith(prefix) for n in snaps.names[stage])
        moved = {n for n in start if not torch.equal(start[n], end[n])}
        assert moved and all(n.startswith(prefix) for n in moved), (stage, moved)
        frozen = [n for n in start if not n.startswith(prefix)]
        assert all(torch.equal(start[n], end[n]) for n in frozen)   # bit-identical
    # the adapter stage's optimizer holds exactly the adapter parameters
    model = dict(snaps.at[("adapter", "end")])
    assert len(snaps.opt_ids["adapter"]) == len(snaps.names["adapter"])
    assert snaps.requires == set(snaps.names["adapter"])
    assert set(model) >= set(snaps.names["adapter"])


def test_lr_groups_are_logged_per_group(tmp_path):
    import json
    text = es.BASE_RECIPE.replace('name = "adapter"\ntrain = ["adapters.*"]',
                                  'name = "adapter"\ntrain = ["adapters.*", "prompts.*"]\n'
                                  'lr_groups = {"prompts.*" = 0.001}')
    text += '\n[log.jsonl]\nplugin = "jsonl"\n'
    path = es.write_recipe(tmp_path, text)
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["metrics"] for r in rows if r["event"] == "epoch_end"]
    assert set(k for k in epochs[-1] if k.startswith("lr/")) == {"lr/default", "lr/prompts.*"}
    # the lr of the last step of the stage's first epoch: 24 items / batch 4 = 6 steps of 12
    factor = 0.5 * (1 + math.cos(math.pi * 5 / 12))
    assert epochs[2]["lr/prompts.*"] == pytest.approx(0.001 * factor)
    assert epochs[2]["lr/default"] == pytest.approx(0.01 * factor)


def test_bad_stage_keys_are_errors(tmp_path):
    path = es.write_recipe(tmp_path)
    with pytest.raises(RecipeError, match="selects no parameter"):
        run_recipe(path, overrides=es.base_overrides(tmp_path) + ['stages=[{name="a", train=["head.*"]}]'],
                   out_dir=tmp_path / "o1")
    with pytest.raises(RecipeError, match="milestones"):
        run_recipe(path, overrides=es.base_overrides(tmp_path) + [
            'stages=[{name="a", train=["prompts.*"], milestones=[1]}]'], out_dir=tmp_path / "o2")
    with pytest.raises(ClapkitError, match="float16"):
        run_recipe(path, overrides=es.base_overrides(tmp_path) + [
            "run.use_amp=true", 'run.amp_dtype="float16"', 'run.device="cpu"'],
            out_dir=tmp_path / "o3")


def test_constant_warmup_per_epoch_equals_dassl():
    """CoOp/CoCoOp/MaPLe's Dassl config: 1 warm-up epoch at a constant 1e-5, then torch's
    CosineAnnealingLR(T_max = max_epoch) stepped once per epoch, starting from the base lr
    (WARMUP_RECOUNT). Rebuilt with torch's scheduler and compared for every step."""
    lr, epochs, steps = 2e-3, 5, 4
    stage = StageConfig(name="s", train=["x"], epochs=epochs, lr=lr, optimizer="sgd",
                        scheduler="cosine", warmup_epochs=1, warmup="constant",
                        warmup_lr=1e-5, schedule_per="epoch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(epochs))
    want = [1e-5]                                    # epoch 0: the constant warm-up
    for _ in range(1, epochs):                       # epoch e: the cosine after e - 1 steps
        want.append(opt.param_groups[0]["lr"])
        cosine.step()
    got = [lr * lr_factor(s, stage, steps) for s in range(epochs * steps)]
    for s, g in enumerate(got):
        assert g == pytest.approx(want[s // steps], rel=1e-12), s
    with pytest.raises(RecipeError, match="warmup_epochs > 0"):
        check_stage(StageConfig(name="s", train=["x"], warmup="constant"), file="r.toml",
                    key="stages.0")
