"""Two gloo processes against one, and ``compare --jobs 2`` against the serial compare, side by side.

For each distributed-safe strategy the same ``lifelong run`` is made in one process and under
``torchrun --standalone --nproc_per_node 2`` (same global batch). Reported per strategy: the whole command's
wall time for both and their ratio, the runner's own training+evaluation time (``wall_time_s``) for both, the
largest accuracy-matrix difference, and the replica divergence the runner measured across the two ranks.
Then ``lifelong compare`` over the given strategies and seeds, serial and with ``--jobs 2``: both wall times,
and whether the two summaries agree on everything but wall times.

    .venv/bin/python bench/distributed_scaling.py [--strategies naive,replay,...] [--epochs 8] [--seeds 0,1]

On a two-core machine both processes share the cores one process would use, so the ratio shows what
communication and process start-up cost, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DISTRIBUTED_SAFE = "naive,joint,replay,dark-er,icarl,der,alade-snn"


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def run_pair(strategy: str, sets: list[str], root: Path) -> dict:
    one, two = root / f"{strategy}-1", root / f"{strategy}-2"
    t_one = timed([sys.executable, "-m", "lifelong", "run", "--strategy", strategy, "--out", str(one), *sets])
    t_two = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "lifelong", "run", "--strategy", strategy, "--out", str(two), *sets])
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    return {
        "strategy": strategy,
        "command_1": t_one, "command_2": t_two,
        "train_eval_1": r1["wall_time_s"], "train_eval_2": r2["wall_time_s"],
        "max_acc_diff": float(np.max(np.abs(np.asarray(r1["accuracy_matrix"]) - np.asarray(r2["accuracy_matrix"])))),
        "last_1": r1["last_accuracy"], "last_2": r2["last_accuracy"],
        "divergence": r2["replica_divergence"],
    }


def compare_pair(strategies: str, seeds: str, sets: list[str], root: Path) -> dict:
    base = [sys.executable, "-m", "lifelong", "compare", "--strategies", strategies, "--seeds", seeds, "--json", *sets]
    t_serial = timed([*base, "--out", str(root / "serial")])
    t_jobs = timed([*base, "--out", str(root / "jobs"), "--jobs", "2"])
    serial = json.loads((root / "serial" / "summary.json").read_text())
    jobs = json.loads((root / "jobs" / "summary.json").read_text())

    def without_times(summary: dict) -> dict:
        return {s: {k: v for k, v in metrics.items() if k != "wall_time_s"}
                for s, metrics in summary["strategies"].items()}

    return {"serial": t_serial, "jobs": t_jobs, "identical": without_times(serial) == without_times(jobs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=DISTRIBUTED_SAFE)
    parser.add_argument("--compare-strategies", default="naive,replay,dark-er")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    sets = ["--set", f"epochs={args.epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"split-digits, 5 experiences, {args.epochs} epochs, global batch 32; OMP_NUM_THREADS=1")
        print("| strategy | command, 1 proc | command, 2 procs | ratio | train+eval, 1 proc | train+eval, 2 procs "
              "| ratio | last acc 1 / 2 | max acc diff | replica divergence |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for strategy in args.strategies.split(","):
            r = run_pair(strategy, sets, root)
            print(f"| {strategy} | {r['command_1']:.1f} s | {r['command_2']:.1f} s | {r['command_2'] / r['command_1']:.2f} "
                  f"| {r['train_eval_1']:.2f} s | {r['train_eval_2']:.2f} s | {r['train_eval_2'] / r['train_eval_1']:.2f} "
                  f"| {r['last_1']:.3f} / {r['last_2']:.3f} | {r['max_acc_diff']:.3f} | {r['divergence']:g} |", flush=True)
        c = compare_pair(args.compare_strategies, args.seeds, sets, root)
        print(f"\ncompare {args.compare_strategies} seeds {args.seeds}: serial {c['serial']:.1f} s, --jobs 2 "
              f"{c['jobs']:.1f} s (ratio {c['jobs'] / c['serial']:.2f}); summaries identical but for wall times: "
              f"{c['identical']}")


if __name__ == "__main__":
    main()
