"""Runs under ``torchrun``: rank facts from the environment, the process group, data shards, DDP wrapping.

Everything here is ``torch.distributed``: gloo on CPU, NCCL on GPU. The device of a process is chosen by its
*local* rank (Avalanche's DistributedHelper uses the global rank, which is wrong across nodes). Each rank
trains on its shard of every experience (``rank::world_size``), gradients are averaged by
DistributedDataParallel, and evaluation counts are summed over ranks so every rank holds the same accuracy
matrix; only rank 0 writes files.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from lifelong.platform.learner import DistributedInfo


def current_distributed_info() -> DistributedInfo:
    """Rank, world size and local rank of this process; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedInfo()
    return DistributedInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def setup(info: DistributedInfo, device: Any) -> Any:
    """Join the process group (once) and return this rank's device: ``cuda:<local rank>`` on GPUs."""
    import torch
    import torch.distributed as dist

    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shard_indices(length: int, info: DistributedInfo) -> list[int]:
    """This rank's share of ``range(length)``: every ``world_size``-th item from ``rank``."""
    return list(range(info.rank, length, info.world_size))


def shard_experience(experience: Any, info: DistributedInfo) -> Any:
    """A copy of an Avalanche experience whose dataset holds only this rank's shard."""
    if not info.enabled:
        return experience
    shard = copy.copy(experience)
    shard._dataset = experience.dataset.subset(shard_indices(len(experience.dataset), info))
    return shard


def sum_over_ranks(values: list[float], info: DistributedInfo, device: Any) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (the values themselves on a single process)."""
    if not info.enabled:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def wrap(module: Any, info: DistributedInfo, device: Any) -> Any:
    """``module`` wrapped in DistributedDataParallel when the run is distributed, else unchanged."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: Any) -> Any:
    """The plain module inside a DDP wrapper (state dicts are always saved unwrapped)."""
    return getattr(module, "module", module)


def teardown(info: DistributedInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
