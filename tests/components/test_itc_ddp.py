"""ITC over 2 gloo processes equals the single-process loss on the same global batch (loss
and gradients, open_clip's gather), and the queue gathers every rank's keys."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clapkit_plugins.losses.itc import ItcObjective, itc_loss

B, D = 3, 5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(2 * B, D, generator=g), torch.randn(2 * B, D, generator=g)
    ids = torch.tensor([0, 1, 1, 2, 3, 0])      # an image id shared across the two ranks
    return v, t, ids


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        v, t, ids = _global_batch()
        mine = slice(rank * B, (rank + 1) * B)
        v, t = v[mine].clone().requires_grad_(), t[mine].clone().requires_grad_()
        loss = itc_loss(v, t, 7.0, ids[mine], gather=True)
        loss.backward()
        obj = ItcObjective(D, queue_size=8).train()
        vm, tm = v.detach() * 2, t.detach() * 2
        obj(v.detach().requires_grad_(), t.detach(), ids[mine], 7.0, vm, tm, alpha=0.4)
        torch.save({"loss": loss.detach(), "gv": v.grad, "gt": t.grad,
                    "queue_ids": obj.queue_ids, "queue_image": obj.queue_image},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_itc_equals_the_single_process_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, _port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    v, t, ids = _global_batch()
    v.requires_grad_(), t.requires_grad_()
    want = itc_loss(v, t, 7.0, ids)
    want.backward()
    assert torch.allclose(r0["loss"], want, atol=1e-6) and torch.allclose(r1["loss"], want,
                                                                          atol=1e-6)
    # each rank's rows get exactly the global loss's gradient w.r.t. them
    got_v = torch.cat([r0["gv"], r1["gv"]])
    got_t = torch.cat([r0["gt"], r1["gt"]])
    assert torch.allclose(got_v, v.grad, atol=1e-6) and torch.allclose(got_t, t.grad, atol=1e-6)
    # the queue holds both ranks' momentum keys, in rank order, identical on each rank
    assert torch.equal(r0["queue_ids"], r1["queue_ids"])
    assert r0["queue_ids"][:6].tolist() == ids.tolist()
    assert torch.equal(r0["queue_image"], r1["queue_image"])
