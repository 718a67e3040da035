"""Process-group facts for runs under ``torchrun`` (read from the environment torchrun sets)."""

from __future__ import annotations

import os

from lifelong.platform.learner import DistributedInfo


def current_distributed_info() -> DistributedInfo:
    """Rank, world size and local rank of this process; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedInfo()
    return DistributedInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")))
