"""Under a 2-process gloo group the MoCo queue gathers every rank's keys: the ranks' queues
stay identical although each rank sees other (and differently many) samples."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clapkit_plugins.losses.moco_rank import MoCoRankConfig, MoCoRankLoss


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss = MoCoRankLoss(MoCoRankConfig(queue_size=16, keys="text"), dim=4, seed=0).train()
        g = torch.Generator().manual_seed(100 + rank)
        text = torch.randn(3, 4, generator=g)
        for step in range(4):
            b = 2 + rank + step % 2                      # ragged batch sizes across ranks
            z = torch.randn(b, 4, generator=g, requires_grad=True)
            labels = torch.randint(0, 3, (b,), generator=g)
            loss({"z": z, "text": text}, {"label": labels}).backward()
        torch.save({"queue": loss.queue, "labels": loss.queue_labels, "ptr": loss.queue_ptr},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_queue_is_identical_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(2, _port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert torch.equal(a["queue"], b["queue"]) and torch.equal(a["labels"], b["labels"])
    # both ranks' keys are in it: 4 steps x (rank0: 2,3,2,3 + rank1: 3,4,3,4) = 24 > 16 slots
    assert int(a["ptr"]) == 24 % 16 and (a["labels"] >= 0).all()
