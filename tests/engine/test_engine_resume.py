"""Checkpoints after every epoch and --resume reaching the same weights as a straight run."""

from __future__ import annotations

import json

import pytest
import torch

import engine_standins as es
from engine_standins import Crash, CrashAfter
from clapkit import hookimpl
from clapkit.engine import checkpoint as ckpt
from clapkit.engine.runner import run_recipe
from clapkit.errors import ClapkitError
from clapkit.plugins import get_plugin_host

RECIPE = es.BASE_RECIPE.replace("epochs = 2", "epochs = 3").replace(
    "lr = 0.01", "lr = 0.01\nwarmup_epochs = 0.5") + '''
[log.jsonl]
plugin = "jsonl"
'''
# randomness everywhere a resume could get wrong: dropout (global torch RNG), mixup, class-weighted sampling, augmented
# cached views (epoch % 2), cosine warmup, AdamW moments
OVERRIDES = ["adapters.frame.dropout=0.3", "run.mixup_alpha=0.4", "data.weighted_sampler=true", "cache.views=2",
             "data.train_counts=[8, 4, 6, 3]"]


def _final(out):
    return ckpt.load(out / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run (shared by the interruption cases; same cache folder)."""
    tmp = tmp_path_factory.mktemp("resume")
    path = es.write_recipe(tmp, RECIPE)
    over = es.base_overrides(tmp) + OVERRIDES
    return tmp, path, over, run_recipe(path, overrides=over, out_dir=tmp / "a")


@pytest.mark.parametrize("crash_after", [4, 2])   # mid stage 2 (epoch 0 of 3); mid stage 1
def test_resume_reaches_the_same_weights(straight, crash_after):
    tmp_path, path, over, straight = straight
    (tmp_path / "b").mkdir(exist_ok=True)
    import shutil
    shutil.rmtree(tmp_path / "b")

    host = get_plugin_host()
    host.register_listener(CrashAfter(crash_after))
    with pytest.raises(Crash):
        run_recipe(path, overrides=over, out_dir=tmp_path / "b", host=host)
    pos = _final(tmp_path / "b")["position"]
    assert pos["epoch"] == (0 if crash_after == 4 else 1)
    resumed = run_recipe(path, overrides=over, out_dir=tmp_path / "b", resume=True)

    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("final/valid_uar", "final/valid_war", "best/valid_uar", "epochs"):
        assert straight[k] == resumed[k], k
    # the resumed run logged only the epochs it still had to do
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    starts = [i for i, r in enumerate(rows) if r["event"] == "run_start"]
    assert len(starts) == 2
    assert sum(r["event"] == "epoch_end" for r in rows[starts[1]:]) == 6 - crash_after


def test_checkpoint_contents_and_atomic_writes(tmp_path):
    path = es.write_recipe(tmp_path)
    out = tmp_path / "out"
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=out)
    st = ckpt.load(out / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "position", "best",
                "accuracy_matrix", "memory", "recipe", "global_epoch"):
        assert key in st
    assert st["position"]["phase"] == "task_done" and st["global_epoch"] == 4
    assert set(st["rng"]) >= {"torch", "numpy", "python"}
    assert not any(k.startswith("backbone.") for k in st["model"])   # frozen CLIP not copied
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=False)
    assert best["metrics"]["valid/uar"] == st["best"]["valid_uar"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    for name in ("recipe.toml", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file() or name == "metrics.jsonl"


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "x.pt"
    ckpt.atomic_save({"format": 1, "v": 1}, target)

    class Bad:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ckpt.atomic_save({"format": 1, "v": Bad()}, target)
    assert torch.load(target, weights_only=False)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_resume_errors(tmp_path):
    path = es.write_recipe(tmp_path)
    with pytest.raises(ClapkitError, match="holds no run to continue"):
        run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "none",
                   resume=True)
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
    with pytest.raises(ClapkitError, match="run.seed"):
        run_recipe(path, overrides=es.base_overrides(tmp_path) + ["run.seed=5"],
                   out_dir=tmp_path / "out", resume=True)


class CrashAtStart:
    @hookimpl
    def clapkit_run_start(self, run):
        raise Crash("killed before the first checkpoint")


def test_resume_after_a_kill_before_the_first_checkpoint(straight):
    """recipe.toml written, no checkpoint: --resume runs from the beginning, to the same
    weights as the straight run."""
    tmp_path, path, over, straight = straight
    out = tmp_path / "c"
    host = get_plugin_host()
    host.register_listener(CrashAtStart())
    with pytest.raises(Crash):
        run_recipe(path, overrides=over, out_dir=out, host=host)
    assert (out / "recipe.toml").is_file() and not (out / "checkpoints" / "last.pt").exists()
    resumed = run_recipe(path, overrides=over, out_dir=out, resume=True)
    assert resumed["final/valid_uar"] == straight["final/valid_uar"]
    a, b = _final(tmp_path / "a"), _final(out)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
