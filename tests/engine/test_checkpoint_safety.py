"""Checkpoints never run code, never hold NaN weights, are group-readable, round-trip RNGs."""

from __future__ import annotations

import os
import random
import stat

import numpy as np
import pytest
import torch

from clapkit.engine import checkpoint as ckpt
from clapkit.errors import ClapkitError


class Payload:
    """What a crafted checkpoint carries: unpickling it calls ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_before_its_payload_runs(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "last.pt"
    torch.save({"format": ckpt.FORMAT, "model": {}, "x": Payload(marker)}, path)
    with pytest.raises(ClapkitError) as err:
        ckpt.load(path)
    assert not marker.exists()
    msg = str(err.value)
    assert "\n" not in msg and "refused" in msg and "system" in msg


def test_cli_resume_from_crafted_checkpoint_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "PWNED"
    torch.save({"format": ckpt.FORMAT, "model": {}, "x": Payload(marker)},
               out / "checkpoints" / "last.pt")
    import engine_standins as es
    recipe = es.write_recipe(tmp_path, es.BASE_RECIPE)
    argv = [sys.executable, "-m", "clapkit.cli", "run", str(recipe), "--out", str(out),
            "--resume"] + [a for o in es.base_overrides(tmp_path) for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(es.__file__)}
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert not marker.exists()
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_checkpoint_state_round_trips_with_weights_only(tmp_path):
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    np.random.standard_normal()          # has_gauss / cached gaussian set
    state = {"format": ckpt.FORMAT, "model": {"w": torch.randn(3)}, "rng": ckpt.rng_state(),
             "position": {"task": 0, "stage": 1, "epoch": 2, "phase": "epoch"}}
    path = ckpt.atomic_save(state, tmp_path / "last.pt")
    want = (random.random(), np.random.standard_normal(), torch.rand(2))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    back = ckpt.load(path)               # weights_only=True inside
    ckpt.set_rng_state(back["rng"])
    got = (random.random(), np.random.standard_normal(), torch.rand(2))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])


def test_nan_weights_are_never_written(tmp_path):
    path = tmp_path / "best.pt"
    ckpt.atomic_save({"format": ckpt.FORMAT, "model": {"w": torch.ones(2)}}, path)
    before = path.read_bytes()
    with pytest.raises(ClapkitError, match="non-finite.*w"):
        ckpt.atomic_save({"format": ckpt.FORMAT, "model": {"w": torch.tensor([1.0, float("nan")])}},
                         path)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_checkpoints_are_group_readable(tmp_path):
    old = os.umask(0o022)
    try:
        path = ckpt.atomic_save({"format": ckpt.FORMAT, "model": {}}, tmp_path / "last.pt")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o644, oct(mode)


def test_older_or_foreign_files_are_one_line_errors(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"format": 1, "model": {}}, p)
    with pytest.raises(ClapkitError, match="format 1"):
        ckpt.load(p)
    p.write_bytes(b"not a zip")
    with pytest.raises(ClapkitError) as err:
        ckpt.load(p)
    assert "\n" not in str(err.value)


def test_a_crafted_backbone_checkpoint_does_not_run_either(tmp_path):
    from clapkit_plugins.backbones.open_clip import TINY_MODEL, OpenClipBackbone, OpenClipConfig
    marker = tmp_path / "PWNED"
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, path)
    with pytest.raises(ClapkitError) as err:
        OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, pretrained=str(path)))
    assert not marker.exists()
    assert "refused" in str(err.value) and "\n" not in str(err.value)
