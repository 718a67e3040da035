"""What one DDP step costs in communication against compute, for the default split-digits backbone.

Run under torchrun (two gloo processes, one thread each):

    OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 bench/gloo_allreduce.py

Prints the mean time of one all-reduce of a gradient the size of the model and of one forward, backward and
SGD step on a per-rank batch of 16 (the global batch 32 over two ranks): the first is what DDP adds to every
step, the second what it saves by splitting the batch.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from lifelong.adapters.nets.backbones import build_backbone


def mean_seconds(step, repeats: int = 200) -> float:
    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model = build_backbone("auto", (1, 8, 8), 10)
    n_params = sum(p.numel() for p in model.parameters())
    gradient = torch.zeros(n_params)
    all_reduce = mean_seconds(lambda: dist.all_reduce(gradient))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    compute = mean_seconds(train_step)
    if dist.get_rank() == 0:
        print(f"{n_params} parameters: all-reduce {all_reduce * 1e3:.3f} ms, forward+backward+step on 16 samples "
              f"{compute * 1e3:.3f} ms, ratio {all_reduce / compute:.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
