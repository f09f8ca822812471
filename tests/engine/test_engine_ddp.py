"""torch DDP with gloo on CPU: 2 processes agree with one process on the same global batches."""

from __future__ import annotations

import json
import socket

import torch
import torch.multiprocessing as mp

import engine_standins as es
from clapkit.engine import checkpoint as ckpt
from clapkit.engine.runner import run_recipe

RECIPE = es.BASE_RECIPE + '\n[log.jsonl]\nplugin = "jsonl"\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_a_single_process(tmp_path):
    """Tolerance: each rank takes the strided shard ``order[r::2]`` of the same epoch order with
    half the batch size, so the two ranks' batch k together are exactly the single run's batch
    k; DDP averages the two half-batch mean gradients, which equals the full-batch mean
    gradient up to float32 summation order (~1e-7 relative). Over 24 steps of AdamW that
    stays below 1e-4 in every weight; the summed confusion matrices then give identical
    WAR/UAR unless a valid item sits on a decision boundary, so metrics may differ by at most
    one of the 12 valid items (1/12 in WAR)."""
    path = es.write_recipe(tmp_path, RECIPE)
    base = es.base_overrides(tmp_path)
    single = run_recipe(path, overrides=base + ["data.batch_size=4"], out_dir=tmp_path / "one")
    mp.spawn(es.ddp_worker, nprocs=2, join=True,
             args=(2, _free_port(), str(path), base + ["data.batch_size=2"],
                   str(tmp_path / "two")))
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    for k in ("final/valid_war", "final/valid_uar", "best/valid_uar", "best/train_war"):
        assert abs(two[k] - single[k]) <= 1 / 12 + 1e-9, k
    assert two["final/valid_confusion"] == single["final/valid_confusion"]
    assert sum(map(sum, two["final/valid_confusion"])) == 12      # every item counted once
    a = ckpt.load(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    b = ckpt.load(tmp_path / "two" / "checkpoints" / "last.pt")["model"]
    trained = [k for k in a if k.startswith(("prompts.", "adapters."))]
    assert trained
    for k in trained:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)
    init = run_recipe(path, overrides=base + ["stages=[]"], out_dir=tmp_path / "zero")
    assert init["epochs"] == 0
    z = ckpt.load(tmp_path / "zero" / "checkpoints" / "last.pt")["model"]
    assert any(not torch.allclose(z[k], b[k]) for k in trained)    # training moved them
    # only rank 0 wrote: one metrics stream, one run_start
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "run_start" for r in rows) == 1
    assert sum(r["event"] == "epoch_end" for r in rows) == 4
