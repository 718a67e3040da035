"""ProP inference: all task prompts in one batched forward against the loop of one forward per task.

For T = 2..20 task prompts, times ``forward_all_prompts`` (patch embedding once, T*B prompted sequences through
the blocks together) and ``forward_each_prompt`` (T full forwards) on the same batch, checks that both give the
same features, and prints loop time / batched time (> 1 means batching wins); "capped" is the batched forward
with ProP's default ``max_batched_sequences=256`` (image slices, every forward still carrying all T prompts). Backbones: the tiny open_clip
ViT (random weights) and, with ``--vitb32``, open_clip ViT-B/32 with random weights (same cost as pretrained).

    OMP_NUM_THREADS=1 .venv/bin/python bench/prop_batched.py [--batch 8 64] [--reps 5] [--vitb32]
"""

from __future__ import annotations

import argparse
import time

import torch


def _time_pair(a, b, reps: int) -> tuple[float, float]:
    """Best-of-``reps`` times of ``a`` and ``b``, alternated so that load on a shared machine hits both alike."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def run(name: str, batch: int, reps: int, tasks: list[int], prompt_length: int, cap: int = 256) -> None:
    from lifelong.adapters.nets.clip import load_backbone
    from lifelong.adapters.nets.prompts import forward_all_prompts, forward_each_prompt

    backbone = load_backbone(name).visual.eval()
    size = backbone.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.randn(batch, 3, size, size)
    print(f"\n{name}: batch {batch}, prompt length {prompt_length}, {torch.get_num_threads()} thread(s), "
          f"best of {reps}, alternated; capped = max_batched_sequences={cap} (ProP's default)")
    print(f"{'tasks':>5} {'loop ms':>10} {'batched ms':>11} {'ratio':>7} {'capped ms':>10} {'ratio':>7} {'max |diff|':>11}")
    with torch.no_grad():
        for t in tasks:
            prompts = torch.randn(t, prompt_length, backbone.width)
            loop, batched = _time_pair(lambda: forward_each_prompt(backbone, x, prompts),
                                       lambda: forward_all_prompts(backbone, x, prompts), reps)
            _, capped = _time_pair(lambda: None, lambda: forward_all_prompts(backbone, x, prompts, cap), reps)
            ref = forward_each_prompt(backbone, x, prompts)
            diff = max(float((forward_all_prompts(backbone, x, prompts) - ref).abs().max()),
                       float((forward_all_prompts(backbone, x, prompts, cap) - ref).abs().max()))
            print(f"{t:>5} {1e3 * loop:>10.1f} {1e3 * batched:>11.1f} {loop / batched:>7.2f} "
                  f"{1e3 * capped:>10.1f} {loop / capped:>7.2f} {diff:>11.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prompt-length", type=int, default=4)
    parser.add_argument("--vitb32", action="store_true", help="also ViT-B/32 (random weights), tasks 2, 5, 10, 20")
    parser.add_argument("--vitb32-batch", type=int, default=4)
    args = parser.parse_args()
    for batch in args.batch:
        run("tiny", batch, args.reps, list(range(2, 21)), args.prompt_length)
    if args.vitb32:
        run("ViT-B-32", args.vitb32_batch, max(1, args.reps // 2), [2, 5, 10, 20], args.prompt_length)


if __name__ == "__main__":
    main()
