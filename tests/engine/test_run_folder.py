"""The run folder: one run at a time (flock, gone with the process), no silent overwrite,
--overwrite removes only run outputs, torn temporaries swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from clapkit.engine.run_folder import RunFolder, holds_run
from clapkit.errors import ClapkitError


def _run_in(out):
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    (out / "checkpoints" / "best.pt").write_bytes(b"best")
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "recipe.toml").write_text("[run]\n")
    (out / "notes.txt").write_text("mine")


def test_a_fresh_folder_is_claimed(tmp_path):
    with RunFolder(tmp_path / "new") as rf:
        assert rf.out.is_dir() and holds_run(rf.out) == []


def test_a_folder_holding_a_run_is_refused_untouched(tmp_path):
    out = tmp_path / "r"
    _run_in(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name[0] != "."}
    with pytest.raises(ClapkitError) as err:
        RunFolder(out).claim()
    msg = str(err.value)
    assert "--resume" in msg and "--out" in msg and "--overwrite" in msg and "\n" not in msg
    assert {p: p.read_bytes() for p in before} == before


def test_overwrite_removes_run_outputs_only(tmp_path):
    out = tmp_path / "r"
    _run_in(out)
    with RunFolder(out, overwrite=True):
        assert holds_run(out) == []
        assert not (out / "checkpoints").exists() and not (out / "recipe.toml").exists()
        assert (out / "notes.txt").read_text() == "mine"


def test_resume_needs_a_checkpoint_and_not_overwrite(tmp_path):
    with pytest.raises(ClapkitError, match="holds no run to continue"):
        RunFolder(tmp_path / "empty", resume=True).claim()
    with pytest.raises(ClapkitError, match="contradict"):
        RunFolder(tmp_path / "x", resume=True, overwrite=True)


def test_torn_temporaries_are_swept_on_resume(tmp_path):
    out = tmp_path / "r"
    _run_in(out)
    torn = [out / "checkpoints" / f".last.pt.{os.getpid()}-abc123.tmp",
            out / "checkpoints" / ".best.pt.99999-zz.tmp", out / ".metrics.csv.1-q.tmp"]
    for t in torn:
        t.write_bytes(b"half")
    with RunFolder(out, resume=True) as rf:
        # only the file whose writer is gone: a live process's temporary is not ours to take
        assert rf.swept == [out / "checkpoints" / ".best.pt.99999-zz.tmp"]
    assert torn[0].exists() and torn[2].exists() and not torn[1].exists()
    assert (out / "checkpoints" / "last.pt").exists()


def test_resume_before_the_first_checkpoint_starts_over(tmp_path):
    """Killed before any checkpoint: recipe and log are there, nothing to resume from."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "recipe.toml").write_text("[run]\n")
    (out / "metrics.jsonl").write_text('{"event": "run_start"}\n')
    with pytest.raises(ClapkitError, match="--resume"):
        RunFolder(out).claim()                     # a plain run says to resume it ...
    with RunFolder(out, resume=True) as rf:        # ... and resume starts it over
        assert rf.restart and holds_run(out) == []


def test_a_run_that_fails_at_start_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "r"
    with pytest.raises(RuntimeError):
        with RunFolder(out):
            raise RuntimeError("the dataset is missing")
    assert not out.exists()
    kept = tmp_path / "mine"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        with RunFolder(kept):
            raise RuntimeError("boom")
    assert kept.is_dir()                           # not created by the run: left alone


def test_overwrite_removes_eval_results_and_the_matrix(tmp_path):
    out = tmp_path / "r"
    _run_in(out)
    for name in ("eval-last-test.json", "accuracy_matrix.json"):
        (out / name).write_text("{}")
    with RunFolder(out, overwrite=True):
        assert not (out / "eval-last-test.json").exists()
        assert not (out / "accuracy_matrix.json").exists()
        assert (out / "notes.txt").read_text() == "mine"


def test_the_same_folder_cannot_be_claimed_twice(tmp_path):
    out = tmp_path / "r"
    with RunFolder(out):
        with pytest.raises(ClapkitError, match="in use by another clapkit run.*pid"):
            RunFolder(out).claim()
    with RunFolder(out):                      # released on exit
        pass


def test_the_lock_dies_with_a_killed_process(tmp_path):
    out = tmp_path / "r"
    code = ("import sys, time; from clapkit.engine.run_folder import RunFolder; "
            "RunFolder(sys.argv[1]).claim(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ClapkitError, match=f"pid {proc.pid}"):
            RunFolder(out).claim()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 5
    while True:
        try:
            RunFolder(out).claim().release()
            break
        except ClapkitError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
