"""Trainable parameters and training time per task: SimE's adapters and ProP's prompt against full fine-tuning.

For each backbone (the tiny open_clip ViT, and open_clip ViT-B/32 with random weights, which costs the same as
the pretrained one) it builds three trainable set-ups on the same frozen-or-not visual tower:

- ``sime``: parallel adapters (bottleneck 64, MLP site, every block) + a cosine head; backbone frozen;
- ``prop``: one task prompt (length 4 tiny / 8 ViT-B) + a cosine head; backbone frozen;
- ``full-ft``: every parameter of the visual tower + a linear head (what fine-tuning the backbone costs);

and times optimiser steps (Adam, forward + backward + step) on random images of the backbone's size. The
seconds per task are measured steps x the number of steps of one task: split-digits (250 images, SimE 5 epochs,
ProP 3 epochs, batch 32) for the tiny backbone; a CIFAR-100 B0-10 task (5,000 images, 1 epoch, batch 32) for
ViT-B/32, extrapolated from the measured step time. SimE trains on the first task only: its cost on later
tasks is one feature pass for the prototypes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sime_cost.py [--vitb32] [--steps 5]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


def _setups(name: str) -> dict[str, tuple[list[nn.Parameter], object, int]]:
    """(trainable params, forward fn, prompt length) for sime / prop / full-ft on fresh copies of ``name``."""
    from lifelong.adapters.nets.clip import attach_adapters, freeze, load_backbone, resolve_blocks

    out = {}
    n_cls = 10
    # SimE
    b = load_backbone(name).visual
    freeze(b)
    aset = attach_adapters(b, resolve_blocks([], len(b.blocks)), ("mlp",), 64, 0.1)
    head = nn.Linear(b.out_dim, n_cls, bias=False)
    out["sime"] = (list(aset.parameters()) + list(head.parameters()), lambda x, b=b, h=head: h(F.normalize(b(x), dim=-1)))
    # ProP
    b = load_backbone(name).visual
    freeze(b)
    length = 4 if name == "tiny" else 8
    prompt = nn.Parameter(torch.rand(length, b.width) * 2 - 1)
    head = nn.Linear(b.out_dim, n_cls, bias=False)
    out["prop"] = ([prompt] + list(head.parameters()), lambda x, b=b, p=prompt, h=head: h(F.normalize(b(x, p), dim=-1)))
    # full fine-tuning
    b = load_backbone(name).visual
    for p in b.parameters():
        p.requires_grad_(True)
    head = nn.Linear(b.out_dim, n_cls)
    out["full-ft"] = (list(b.parameters()) + list(head.parameters()), lambda x, b=b, h=head: h(b(x)))
    return out


def measure(name: str, batch: int, steps: int, task_steps: dict[str, int], task_label: str) -> None:
    from lifelong.adapters.nets.clip import load_backbone

    probe = load_backbone(name).visual
    size = probe.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    backbone_params = sum(p.numel() for p in probe.parameters())
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    print(f"\n{name} ({backbone_params / 1e6:.2f} M visual parameters), batch {batch}, {size}px, "
          f"{torch.get_num_threads()} thread(s); per task: {task_label}")
    print(f"{'setup':<8} {'trainable':>12} {'% of backbone':>14} {'s/step':>9} {'steps/task':>11} {'s/task':>9} {'vs full-ft':>11}")
    rows = {}
    for setup, (params, fwd) in _setups(name).items():
        opt = torch.optim.Adam(params, lr=1e-3)
        trainable = sum(p.numel() for p in params)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            loss = F.cross_entropy(fwd(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
        rows[setup] = (trainable, min(times))
    for setup, (trainable, step) in rows.items():
        n = task_steps[setup]
        per_task = step * n
        ratio = per_task / (rows["full-ft"][1] * task_steps["full-ft"])
        print(f"{setup:<8} {trainable:>12,} {100 * trainable / backbone_params:>13.2f}% {step:>9.3f} {n:>11} "
              f"{per_task:>9.1f} {ratio:>10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--vitb32", action="store_true")
    args = parser.parse_args()
    digits = math.ceil(250 / 32)
    measure("tiny", 32, args.steps, {"sime": 5 * digits, "prop": 3 * digits, "full-ft": 5 * digits},
            "split-digits task (250 images, batch 32; SimE/full-ft 5 epochs, ProP 3)")
    if args.vitb32:
        cifar = math.ceil(5000 / 32)
        measure("ViT-B-32", 32, max(2, args.steps // 2), {"sime": cifar, "prop": cifar, "full-ft": cifar},
                "CIFAR-100 B0-10 task (5,000 images, 1 epoch, batch 32), extrapolated from the step time")


if __name__ == "__main__":
    main()
