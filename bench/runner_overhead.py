"""What the platform's runner costs over a plain Avalanche loop written by hand.

Both sides train Avalanche's ``Naive`` on the same split-digits stream (same seed, backbone, optimizer, epochs,
batch size) and evaluate on every test experience after each step; the platform side is
``run_experiment`` (what ``lifelong run --strategy naive`` calls), which also writes checkpoints, results.json,
the CSV and the plots. Runs alternate so that machine noise hits both alike.

    .venv/bin/python bench/runner_overhead.py [--repeats 5] [--epochs 4,20]

The platform's extra work is mostly fixed (two PNG plots, results.json/CSV, one checkpoint per step), so the
ratio shrinks as runs get longer; it is reported at each epoch count given.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn


def hand_written(stream, epochs: int, batch_size: int, lr: float, seed: int) -> tuple[float, float]:
    """The reference: Avalanche's Naive with its own evaluation plugin, as its tutorials write it."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from lifelong.adapters.backbones import build_backbone

    torch.manual_seed(seed)
    model = build_backbone("auto", stream.input_shape, stream.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    strategy = Naive(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=batch_size,
                     train_epochs=epochs, eval_mb_size=256, device="cpu", evaluator=evaluator)
    start = time.perf_counter()
    for experience in stream.train_stream:
        strategy.train(experience, num_workers=0)
        metrics = strategy.eval(stream.test_stream, num_workers=0)
    elapsed = time.perf_counter() - start
    last = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream"))
    return elapsed, float(last)


def platform_run(epochs: int, batch_size: int, lr: float, seed: int) -> tuple[float, float]:
    from lifelong.platform.runner import resolve_config, run_experiment

    config = resolve_config(strategy="naive", benchmark="split-digits", seed=seed,
                            overrides={"epochs": epochs, "batch_size": batch_size, "lr": lr})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = run_experiment(config, out=out, progress=False)
        elapsed = time.perf_counter() - start
    return elapsed, results["last_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
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

    platform_times, hand_times, platform_acc, hand_acc = [], [], [], []
    with quiet_avalanche():
        for _ in range(args.repeats):
            t, acc = platform_run(epochs, args.batch_size, args.lr, args.seed)
            platform_times.append(t)
            platform_acc.append(acc)
            t, acc = hand_written(stream, epochs, args.batch_size, args.lr, args.seed)
            hand_times.append(t)
            hand_acc.append(acc)
    ratios = [p / h for p, h in zip(platform_times, hand_times)]
    print(f"naive on split-digits, {epochs} epochs, batch {args.batch_size}, {args.repeats} alternating repeats")
    print(f"  platform run_experiment: median {statistics.median(platform_times):.2f} s, last accuracy {statistics.mean(platform_acc):.4f}")
    print(f"  hand-written Avalanche:  median {statistics.median(hand_times):.2f} s, last accuracy {statistics.mean(hand_acc):.4f}")
    print(f"  wall-time ratio platform/hand: median {statistics.median(ratios):.3f} (per repeat: {', '.join(f'{r:.3f}' for r in ratios)})")

if __name__ == "__main__":
    main()
