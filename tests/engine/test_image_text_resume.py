"""BLIP's ITC state across a kill: the momentum model (EMA buffers), the feature queue and
its pointer, and the alpha ramp's step counter are part of last.pt, so a run killed between
epochs and resumed ends bit-identical to the run that was never stopped."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from clapkit.data.demo import ensure_demo
from clapkit.engine.runner import run_recipe
from clapkit.plugins import get_plugin_host
from engine_standins import Crash, CrashAfter

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _run(tmp: Path, root: Path, out: Path, crash_after: int | None = None,
         resume: bool = False) -> dict:
    host = get_plugin_host(autoload_third_party=False)
    if crash_after:
        host.register_listener(CrashAfter(crash_after))
    over = [f'data.root="{root}"', "data.batch_size=8", "data.num_workers=0",
            "run.progress=false", "stages.contrastive.epochs=2", "stages.grounded.epochs=1",
            "losses.itc.momentum_model=true", "losses.itc.queue_size=24",
            "losses.itc.alpha=0.4", "losses.itc.alpha_ramp_steps=7",
            "log.eval.captions=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        return run_recipe(RECIPES / "demo_pretrain.toml", host=host, out_dir=out,
                          overrides=over, resume=resume)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("itc_resume")
    root = ensure_demo("captions", tmp / "captions", tiny=True,
                       host=get_plugin_host(autoload_third_party=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(tmp, root, tmp / "straight")
    finally:
        torch.set_num_threads(threads)
    return tmp, root


def _model(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]


@pytest.mark.parametrize("crash_after", [1, 2])   # mid contrastive; before grounded starts
def test_momentum_model_and_queue_survive_kill_and_resume(straight, crash_after):
    tmp, root = straight
    out = tmp / f"killed{crash_after}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(Crash):
            _run(tmp, root, out, crash_after=crash_after)
        _run(tmp, root, out, resume=True)
    finally:
        torch.set_num_threads(threads)
    want, got = _model(tmp / "straight"), _model(out)
    keys = [k for k in want if k.startswith("losses.itc.")]
    assert any("momentum_backbone" in k for k in keys) and \
        "losses.itc.objective.queue_text" in keys and "losses.itc.steps" in keys
    assert int(want["losses.itc.objective.queue_ptr"]) != 0
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
