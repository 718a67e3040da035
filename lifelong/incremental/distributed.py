"""Runs under ``torchrun``: rank facts from the environment, the process group, data shards, DDP wrapping.

Everything here is ``torch.distributed``: gloo on CPU, NCCL on GPU. The device of a process is chosen by its
*local* rank (Avalanche's DistributedHelper uses the global rank, which is wrong across nodes). Each rank
trains on its shard of every experience (``rank::world_size``, padded so every rank has as many batches),
gradients are averaged by DistributedDataParallel, replicas are checked and re-synchronised after each
experience, and evaluation counts are summed over ranks so every rank holds the same accuracy matrix. Only rank
0 writes files; per-rank strategy state (a replay buffer filled from the rank's shard) is gathered into its
checkpoint.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from lifelong.incremental.learner import DistributedInfo


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


def shard_indices(length: int, info: DistributedInfo, *, pad: bool = True) -> list[int]:
    """This rank's share of ``range(length)``: every ``world_size``-th item from ``rank``.

    With ``pad`` (training), the list is first padded by wrapping around to a multiple of ``world_size``, as
    torch's DistributedSampler does, so every rank gets the same number of items and therefore the same number
    of batches: a rank with one batch more would wait forever in DDP's all-reduce. Evaluation shards are not
    padded (a padded item would be counted twice).
    """
    indices = list(range(length))
    if pad and length:
        total = -(-length // info.world_size) * info.world_size
        indices += indices[: total - length]
    return indices[info.rank :: info.world_size]


def shard_experience(experience: Any, info: DistributedInfo, *, pad: bool = True) -> Any:
    """A copy of an Avalanche experience whose dataset holds only this rank's shard.

    The copy keeps the whole experience as ``whole_experience``: every rank builds the whole stream, so a
    strategy that needs a pass over all of an experience (herding, batch-norm statistics) reads it from there
    without any communication, in the same order as a single process would.
    """
    if not info.enabled:
        return experience
    shard = copy.copy(experience)
    shard._dataset = experience.dataset.subset(shard_indices(len(experience.dataset), info, pad=pad))
    shard.whole_experience = experience
    return shard


def whole_experience(experience: Any) -> Any:
    """The unsharded experience behind a shard (the experience itself outside torchrun)."""
    return getattr(experience, "whole_experience", experience)


def local_share(total: int, info: DistributedInfo) -> int:
    """This rank's part of a budget split over the ranks (a replay memory): the parts add up to ``total``."""
    return total // info.world_size + (1 if info.rank < total % info.world_size else 0)


def gather_to_main(value: Any, info: DistributedInfo) -> list[Any] | None:
    """Every rank's ``value`` in rank order on rank 0 (None on the other ranks); ``[value]`` in one process."""
    if not info.enabled:
        return [value]
    import torch.distributed as dist

    parts: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(value, parts, dst=0, weights_only=True)  # state trees only: tensors and plain values
    return parts


def sum_over_ranks(values: list[float], info: DistributedInfo, device: Any) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (the values themselves on a single process)."""
    if not info.enabled:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_parameters(parameters: list[Any], info: DistributedInfo) -> None:
    """Make ``parameters`` rank 0's on every rank (modules outside DDP that train beside the model, such as a
    distillation teacher, start equal)."""
    if not info.enabled:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for p in parameters:
            dist.broadcast(p.data, src=0)


def average_gradients(parameters: list[Any], info: DistributedInfo) -> None:
    """Average the gradients of ``parameters`` over the ranks, as DDP does for the model: a module outside DDP
    that learns from each rank's shard then takes the same step on every rank."""
    if not info.enabled:
        return
    import torch.distributed as dist

    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world_size)


def synchronise_replicas(module: Any, info: DistributedInfo, device: Any) -> float:
    """Make every rank's copy of ``module`` rank 0's, and return how far apart they were (max abs difference).

    DDP keeps the parameters equal by averaging gradients, but buffers such as batch-norm running statistics
    are updated by each rank's own last forward, and a strategy's own whole-data steps could drift on
    non-deterministic kernels. After each experience the runner calls this, so every rank evaluates and later
    trains from the same model (buffers included), and records the divergence of the *parameters*: 0.0 on CPU,
    where any other value would be a bug. The buffers' difference is expected (each rank's last batch moved its
    running statistics) and is not counted.
    """
    if not info.enabled:
        return 0.0
    import torch
    import torch.distributed as dist

    divergence = 0.0
    parameters = {name for name, _ in module.named_parameters()}
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
                continue
            reference = tensor.detach().clone()
            dist.broadcast(reference, src=0)
            if name in parameters:  # a buffer is made rank 0's too, but its difference is not counted
                divergence = max(divergence, float((tensor.double() - reference.double()).abs().max()))
            tensor.copy_(reference)
    worst = torch.tensor([divergence], dtype=torch.float64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())


def wrap(module: Any, info: DistributedInfo, device: Any) -> Any:
    """``module`` wrapped in DistributedDataParallel when the run is distributed, else unchanged."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


class OutsideModuleTree:
    """Holds a DDP wrapper as a plain attribute of the module it wraps: a deep copy of that module (a teacher,
    an old model) gets an empty holder, and state dicts never see the wrapper."""

    def __init__(self, wrapper: Any = None) -> None:
        self.wrapper = wrapper

    def __deepcopy__(self, memo: dict[int, Any]) -> "OutsideModuleTree":
        return OutsideModuleTree()


def unwrap(module: Any) -> Any:
    """The plain module inside a DDP wrapper (state dicts are always saved unwrapped)."""
    return getattr(module, "module", module)


def teardown(info: DistributedInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
