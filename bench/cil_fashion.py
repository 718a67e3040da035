"""The evidence table on split-fashion-mnist (5 experiences of 2 classes): every offline class-incremental strategy,
several seeds, mean ± std of AIA, last accuracy, forgetting and BWT, the wall time of a run and, for der and
alade-snn, the estimated energy of one forward pass per sample (45 nm figures, adapters/nets/spiking.py).

Each (strategy, seed) run is ``run_experiment`` on ``configs/<strategy>/split-fashion-mnist.yaml`` (exactly what
``lifelong run --config ... --seed S`` gives) with the bench's protocol on top, the same for every strategy:
``--train-per-class`` training and ``--test-per-class`` test images a class (seeded subsets), applied to all
strategies so the rows compare. Each run uses one torch thread; ``--jobs`` runs in parallel. Runs already in
``--out`` are reused (``--fresh`` reruns). Needs the Fashion-MNIST files (``make data``).

    .venv/bin/python bench/cil_fashion.py --seeds 0,1,2 --train-per-class 300 --test-per-class 300 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("naive", "joint", "ewc", "lwf", "replay", "icarl", "gdumb", "dark-er", "der", "alade-snn")


def run_dir(out: str, strategy: str, seed: int) -> Path:
    return Path(out) / f"{strategy}-seed{seed}"


def one(args: tuple[str, int, str, dict[str, Any], bool]) -> dict[str, Any]:
    strategy, seed, out, protocol, fresh = args
    import torch

    torch.set_num_threads(1)
    from lifelong.incremental.run import resolve_config, run_experiment

    folder = run_dir(out, strategy, seed)
    done = folder / "results.json"
    if done.exists() and not fresh:
        return json.loads(done.read_text())
    config = resolve_config(config_file=REPO / "configs" / strategy / "split-fashion-mnist.yaml", seed=seed,
                            device="cpu", overrides=protocol)
    try:
        return run_experiment(config, out=folder, progress=False)
    except Exception as exc:  # one failing run is reported, the others still count
        return {"strategy": strategy, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}


def fmt(values: list[float]) -> str:
    import numpy as np

    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():6.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:5.2f}"


def parse_protocol(argv: list[str] | None, description: str, default_strategies: list[str]
                   ) -> tuple[argparse.Namespace, list[int], list[str], dict[str, int]]:
    """The options both Fashion-MNIST benches share: seeds, strategies, the per-class subsample, out, jobs."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", default=None, help="comma-separated strategies (default: all of the bench's)")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=300)
    p.add_argument("--out", default="runs/bench-cil-fashion")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    strategies = [s.strip() for s in args.only.split(",")] if args.only else list(default_strategies)
    protocol = {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class}
    return args, seeds, strategies, protocol


def run_all(fn: Any, tasks: list[tuple], jobs: int) -> list[dict[str, Any]]:
    """``fn`` over ``tasks``, in ``jobs`` spawned processes (one after the other when ``jobs`` is 1)."""
    if jobs <= 1:
        return [fn(t) for t in tasks]
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, tasks))


def t_interval(values: list[float], scale: float = 100.0) -> tuple[float, float, float]:
    """Mean of ``values`` times ``scale`` (fractions to %; 1 for values in their own unit) and its 95 %
    t-interval over seeds (NaN bounds for one value). Every bench's intervals come from here."""
    import numpy as np
    from scipy import stats

    a = scale * np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
    return a.mean(), a.mean() - half, a.mean() + half


def plus_minus(values: list[float], digits: int = 1) -> str:
    """``mean ± half-width of the 95 % t-interval``, values in their own unit."""
    mean, _, high = t_interval(values, scale=1.0)
    return f"{mean:.{digits}f} ± {high - mean:.{digits}f}"


def print_ranking(groups: dict[str, list[dict[str, Any]]]) -> None:
    """The strategies ordered by mean AIA, each with the 95 % t-interval of its mean over seeds."""
    print("\nranking by AIA, mean [95 % t-interval over seeds] in %")
    rows = sorted(((t_interval([g["average_incremental_accuracy"] for g in group]), name)
                   for name, group in groups.items() if group), reverse=True)
    for rank, ((mean, low, high), name) in enumerate(rows, 1):
        print(f"{rank:>2}. {name:<11}{mean:6.2f} [{low:6.2f}, {high:6.2f}]")


def main(argv: list[str] | None = None) -> int:
    args, seeds, strategies, protocol = parse_protocol(argv, __doc__.splitlines()[0], STRATEGIES)
    tasks = [(s, seed, args.out, protocol, args.fresh) for s in strategies for seed in seeds]
    t0 = time.time()
    runs = run_all(one, tasks, args.jobs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault(r["strategy"], []).append(r)
    print(f"split-fashion-mnist, 5 experiences x 2 classes, {args.train_per_class} training / {args.test_per_class} "
          f"test images a class, seeds {seeds}, configs/<strategy>/split-fashion-mnist.yaml; mean ± std over seeds "
          f"in %; one thread a run, {args.jobs} runs in parallel; bench wall time {time.time() - t0:.0f} s")
    header = f"{'strategy':<11}{'AIA':>16}{'last':>16}{'forgetting':>16}{'BWT':>16}{'run s':>8}{'uJ/sample':>11}"
    print(header)
    print("-" * len(header))
    for strategy in [s for s in STRATEGIES if s in strategies] + [s for s in strategies if s not in STRATEGIES]:
        group = groups.get(strategy, [])
        if not group:
            continue
        wall = sum(g["wall_time_s"] for g in group) / len(group)
        energy = [g.get("strategy_summary", {}).get("ops", {}).get("energy_uj_per_sample") for g in group]
        energy_text = f"{sum(energy) / len(energy):.1f}" if all(e is not None for e in energy) else "-"
        n = f" (n={len(group)})" if len(group) != len(seeds) else ""
        print(f"{strategy:<11}"
              + "".join(f"{fmt([g[k] for g in group]):>16}" for k in
                        ("average_incremental_accuracy", "last_accuracy", "forgetting", "bwt"))
              + f"{wall:>8.1f}{energy_text:>11}{n}")
    print_ranking(groups)
    failures = [r for r in runs if "error" in r]
    for f in failures:
        print(f"FAILED: {f['strategy']} seed {f['seed']}: {f['error']}")
    print(f"command: {' '.join([Path(sys.executable).name, 'bench/cil_fashion.py', *(argv if argv is not None else sys.argv[1:])])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
