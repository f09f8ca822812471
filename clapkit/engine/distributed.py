"""torch DDP under ``torchrun``: process group from the environment, reductions, wrapping.

``torchrun --nproc_per_node N clapkit run ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
the engine then joins a process group (gloo on CPU, nccl on CUDA), shards every loader by
rank, wraps the pipeline in ``DistributedDataParallel`` per stage (so gradients are
all-reduced), sums confusion matrices over ranks and lets only rank 0 write files.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn


@attrs.frozen
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False       # this run created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment (or the one already
    initialised by the caller); a single process without those variables runs alone."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", "0")), True)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place; also returned)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over the parameters that currently require grad.

    Built per stage: DDP registers its gradient hooks for the trainable set at construction.
    ``find_unused_parameters`` because losses may train views the head never reads.
    """
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=True)
