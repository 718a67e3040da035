"""What the platform's runner costs over a plain Avalanche loop written by hand.

Both sides train Avalanche's ``Naive`` on the same split-digits stream (same seed, backbone, optimizer, epochs,
batch size) and evaluate on every test experience after each step; the platform side is
``run_experiment`` (what ``lifelong run --strategy naive`` calls), which also writes checkpoints, results.json,
the CSV and the plots. Runs alternate so that machine noise hits both alike.

    .venv/bin/python bench/runner_overhead.py [--repeats 15] [--epochs 4,20]

The platform's extra work is mostly fixed (two PNG plots, results.json/CSV, one checkpoint per step), so the
ratio shrinks as runs get longer; it is reported at each epoch count given, as the median over repeats of the
wall-time ratio and of the CPU-time ratio (``time.process_time``: the process's CPU seconds, all threads; on a
machine that other work also uses it varies less than wall time), with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn


def hand_written(stream, epochs: int, batch_size: int, lr: float, seed: int) -> tuple[float, float, float]:
    """The reference: Avalanche's Naive with its own evaluation plugin, as its tutorials write it."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from lifelong.adapters.nets.backbones import build_backbone

    torch.manual_seed(seed)
    model = build_backbone("auto", stream.input_shape, stream.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    strategy = Naive(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=batch_size,
                     train_epochs=epochs, eval_mb_size=256, device="cpu", evaluator=evaluator)
    start, cpu = time.perf_counter(), time.process_time()
    for experience in stream.train_stream:
        strategy.train(experience, num_workers=0)
        metrics = strategy.eval(stream.test_stream, num_workers=0)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    last = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream"))
    return elapsed, cpu, float(last)


def platform_run(epochs: int, batch_size: int, lr: float, seed: int) -> tuple[float, float, float]:
    from lifelong.incremental.run import resolve_config, run_experiment

    config = resolve_config(strategy="naive", benchmark="split-digits", seed=seed,
                            overrides={"epochs": epochs, "batch_size": batch_size, "lr": lr})
    with tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), time.process_time()
        results = run_experiment(config, out=out, progress=False)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, cpu, results["last_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epochs", default="4,20", help="comma-separated epoch counts to measure")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # one thread each: the comparison measures overhead, not BLAS scheduling

    from lifelong.platform.registry import create, ensure_loaded

    ensure_loaded()  # plugin discovery is a one-time start-up cost, not a per-run one
    stream = create("benchmark", "split-digits", seed=args.seed)
    for epochs in [int(e) for e in args.epochs.split(",")]:
        measure(stream, epochs, args)


def measure(stream, epochs: int, args: argparse.Namespace) -> None:
    from lifelong.platform.quiet import quiet_avalanche

    times: dict[str, list[tuple[float, float, float]]] = {"platform": [], "hand": []}
    load_before = os.getloadavg()[0]
    with quiet_avalanche():
        platform_run(epochs, args.batch_size, args.lr, args.seed)  # warm-up: first-call imports and caches
        for _ in range(args.repeats):
            times["platform"].append(platform_run(epochs, args.batch_size, args.lr, args.seed))
            times["hand"].append(hand_written(stream, epochs, args.batch_size, args.lr, args.seed))
    load_after = os.getloadavg()[0]
    print(f"naive on split-digits, {epochs} epochs, batch {args.batch_size}, {args.repeats} alternating repeats "
          f"(load average {load_before:.1f} before, {load_after:.1f} after)")
    for side, name in (("platform", "platform run_experiment"), ("hand", "hand-written Avalanche")):
        wall, cpu, acc = zip(*times[side])
        print(f"  {name + ':':<25} median {statistics.median(wall):.2f} s wall, {statistics.median(cpu):.2f} s CPU, "
              f"last accuracy {statistics.mean(acc):.4f}")
    for k, label in ((0, "wall-time"), (1, "CPU-time")):
        ratios = [p[k] / h[k] for p, h in zip(times["platform"], times["hand"])]
        print(f"  {label} ratio platform/hand: median {statistics.median(ratios):.3f} "
              f"(per repeat: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
