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
    with pytest.raises(ClapkitError, match="no checkpoint"):
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
        assert sorted(rf.swept) == sorted(torn)
    assert not any(t.exists() for t in torn) and (out / "checkpoints" / "last.pt").exists()


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
