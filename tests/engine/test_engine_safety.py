"""Runs that stop on NaN without saving it, run folders that refuse a second run, resume
after a kill between logging and checkpointing, loss parameters in sync under DDP."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import engine_standins as es
import safety_standins as ss
from clapkit import hookimpl
from clapkit.cli import main
from clapkit.engine import checkpoint as ckpt
from clapkit.engine.guard import NonFiniteError
from clapkit.engine.run_folder import RunFolder
from clapkit.engine.runner import run_recipe
from clapkit.errors import ClapkitError
from clapkit.plugins import get_plugin_host

RECIPE = es.BASE_RECIPE.replace('plugins = ["engine_standins"]',
                                'plugins = ["engine_standins", "safety_standins"]') + '''
[log.jsonl]
plugin = "jsonl"
'''


def _finite(state) -> bool:
    if torch.is_tensor(state):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_finite(v) for v in state)
    return True


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path, mode):
    path = es.write_recipe(tmp_path, RECIPE)
    # 24 train items / batch 4 = 6 steps an epoch: poisoned in the second epoch
    over = es.base_overrides(tmp_path) + ["losses.ce.plugin=\"t_poison\"",
                                          "losses.ce.at_step=9", f"losses.ce.mode=\"{mode}\""]
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError) as err:
        run_recipe(path, overrides=over, out_dir=out)
    msg = str(err.value)
    assert "\n" not in msg and "task 0, stage 'prompt', epoch 2/2, step 3" in msg
    assert "ce=" in msg
    last = ckpt.load(out / "checkpoints" / "last.pt")
    assert last["position"] == {"task": 0, "stage": 0, "epoch": 0, "phase": "epoch"}
    for name in ("last.pt", "best.pt"):
        assert _finite(ckpt.load(out / "checkpoints" / name)["model"]), name


def test_nan_run_exits_2_with_one_line(tmp_path, capsys):
    path = es.write_recipe(tmp_path, RECIPE)
    argv = ["run", str(path), "--out", str(tmp_path / "out"), "--set",
            es.base_overrides(tmp_path)[0], "--set", "losses.ce.plugin=\"t_poison\"",
            "--set", "losses.ce.at_step=2"]
    with pytest.raises(SystemExit) as ex:
        main(argv)
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "non-finite loss" in err


def test_second_run_into_a_run_folder_is_refused_and_changes_nothing(tmp_path):
    path = es.write_recipe(tmp_path, RECIPE)
    over = es.base_overrides(tmp_path) + ["stages.adapter.epochs=0"]
    out = tmp_path / "out"
    run_recipe(path, overrides=over, out_dir=out)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ClapkitError, match="already holds a run.*--resume.*--out.*--overwrite"):
        run_recipe(path, overrides=over, out_dir=out)
    assert {p: p.read_bytes() for p in files} == files
    # --overwrite replaces it: one run_start in the log afterwards
    run_recipe(path, overrides=over, out_dir=out, overwrite=True)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(r)["event"] == "run_start" for r in rows) == 1
    # the resolved recipe says what made the run
    head = (out / "recipe.toml").read_text().splitlines()[0]
    assert head.startswith("# clapkit_version = ")


def test_a_run_into_a_folder_in_use_is_refused(tmp_path):
    path = es.write_recipe(tmp_path, RECIPE)
    out = tmp_path / "busy"
    with RunFolder(out):                                    # another run holds it
        with pytest.raises(ClapkitError, match="in use by another clapkit run"):
            run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=out)
    assert not (out / "checkpoints").exists()


class Kill(Exception):
    pass


class KillAfterLogging:
    """Raises in ``clapkit_epoch_end`` after the loggers wrote the epoch (they are attached
    later, so pluggy calls them first) and before ``last.pt`` is written: a kill between
    the log and the checkpoint."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    @hookimpl
    def clapkit_epoch_end(self, run, task, stage, epoch, metrics):
        self.seen += 1
        if self.seen == self.n:
            # and the temporary a kill -9 inside atomic_save would leave
            torn = run.out_dir / "checkpoints" / f".last.pt.{2**22 + 17}-abcdef.tmp"
            torn.write_bytes(b"half a checkpoint")
            raise Kill()


def test_resume_after_a_kill_between_log_and_checkpoint(tmp_path):
    path = es.write_recipe(tmp_path, RECIPE)
    over = es.base_overrides(tmp_path)
    out = tmp_path / "out"
    host = get_plugin_host()
    host.register_listener(KillAfterLogging(3))
    with pytest.raises(Kill):
        run_recipe(path, overrides=over, out_dir=out, host=host)
    assert list((out / "checkpoints").glob(".*.tmp"))
    run_recipe(path, overrides=over, out_dir=out, resume=True)
    assert not list(out.rglob("*.tmp"))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [(r["task"], r["stage"], r["epoch"]) for r in rows if r["event"] == "epoch_end"]
    assert epochs == [(0, "prompt", 0), (0, "prompt", 1), (0, "adapter", 0), (0, "adapter", 1)]
    assert [r["event"] for r in rows].count("task_end") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loss_parameters_and_moco_queue_stay_in_sync_across_ranks(tmp_path):
    recipe = RECIPE + '''
[losses.temp]
plugin = "t_temp_ce"

[losses.moco]
plugin = "moco_rank"
queue_size = 16
weight = 0.1
'''
    recipe = recipe.replace('train = ["prompts.*"]', 'train = ["prompts.*", "losses.*"]')
    path = es.write_recipe(tmp_path, recipe)
    dump = tmp_path / "dump"
    dump.mkdir()
    over = es.base_overrides(tmp_path) + ["data.batch_size=2", "stages.adapter.epochs=0"]
    env = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(es.__file__)] + ([env] if env else []))
    try:
        mp.spawn(ss.ddp_worker, nprocs=2, join=True,
                 args=(2, _free_port(), str(path), over, str(tmp_path / "two"), str(dump)))
    finally:
        os.environ["PYTHONPATH"] = env
    a, b = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert float(a["losses.temp.log_t"]) != 0.0                 # it trained
    assert torch.equal(a["losses.temp.log_t"], b["losses.temp.log_t"])
    assert torch.equal(a["losses.moco.queue"], b["losses.moco.queue"])
    assert torch.equal(a["losses.moco.queue_labels"], b["losses.moco.queue_labels"])
