"""Class-incremental split-digits (5 experiences): ALADE-SNN against DER and the baselines, with its ablations.

Every replay method has the same memory budget (``mem_size``, 200 by default). Each (variant, seed) pair is one
``lifelong.incremental.run.run_experiment`` call, so the numbers are exactly what ``lifelong run`` gives; the
ablations are ``alade-snn`` with one switch turned off. Prints AIA / last accuracy / forgetting as mean ± std
over the seeds, then the cost of one forward pass: alade-snn's spike rate and synaptic operations against der's
multiply-accumulates (same ResNet layout, ReLU instead of LIF). Runs already finished in ``--out`` are reused, so
an interrupted bench continues where it stopped (``--fresh`` reruns everything).

    .venv/bin/python bench/cil_digits.py --seeds 0,1,2,3,4 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("naive", "naive", {}),
    ("ewc", "ewc", {}),
    ("lwf", "lwf", {}),
    ("replay", "replay", {}),
    ("icarl", "icarl", {}),
    ("der", "der", {}),
    ("alade-snn", "alade-snn", {}),
    ("alade-snn -oton", "alade-snn", {"oton": False}),
    ("alade-snn -align", "alade-snn", {"logit_alignment": False}),
    ("alade-snn -kd", "alade-snn", {"distillation": False}),
    ("alade-snn -aux", "alade-snn", {"aux_loss": False}),
]


def _slug(label: str) -> str:
    return label.replace(" ", "").replace("-", "_").replace("+", "")


def _one(args: tuple[str, str, dict[str, Any], int, str, dict[str, Any], bool]) -> dict[str, Any]:
    label, strategy, overrides, seed, out, common, fresh = args
    import torch

    torch.set_num_threads(1)
    from lifelong.incremental.run import resolve_config, run_experiment

    run_dir = Path(out) / f"{_slug(label)}-seed{seed}"
    done = run_dir / "results.json"
    if done.exists() and not fresh:
        results = json.loads(done.read_text())
    else:
        keys = {**common, **overrides} if strategy in ("der", "alade-snn") else dict(overrides)
        config = resolve_config(strategy=strategy, benchmark="split-digits", seed=seed, device="cpu", overrides=keys)
        try:
            results = run_experiment(config, out=run_dir, progress=False)
        except Exception as exc:  # one failing run is reported, the others still count
            return {"strategy": label, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}
    results["strategy"] = label
    return results


def _fmt(values: list[float]) -> str:
    import numpy as np

    a = 100 * np.asarray(values, dtype=float)
    std = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():6.2f} ± {std:4.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--only", default=None, help="comma-separated variant labels to run (default all)")
    p.add_argument("--out", default="runs/bench-cil-digits")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for der and alade-snn (e.g. epochs=6), applied to every run of them")
    p.add_argument("--fresh", action="store_true", help="rerun even if a run's results.json exists")
    args = p.parse_args(argv)
    from lifelong.platform.config import parse_overrides

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    common = parse_overrides(args.set) if args.set else {}
    variants = VARIANTS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        variants = [v for v in VARIANTS if v[0] in wanted]
    tasks = [(label, strat, ov, seed, args.out, common, args.fresh) for label, strat, ov in variants for seed in seeds]
    t0 = time.time()
    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(_one, tasks))
    else:
        runs = [_one(t) for t in tasks]
    by_label: dict[str, list[dict[str, Any]]] = {}
    failures = [r for r in runs if "error" in r]
    for r in runs:
        if "error" not in r:
            by_label.setdefault(r["strategy"], []).append(r)

    mem = common.get("mem_size", 200)
    print(f"split-digits, 5 experiences, seeds {seeds}, mem_size {mem} for der/alade-snn (baselines: their default 200) "
          f"(mean ± std over seeds, %); bench wall time {time.time() - t0:.0f} s")
    print(f"{'variant':<18}{'AIA':>16}{'last':>16}{'forgetting':>16}{'run time s':>12}")
    rows = {}
    for label, group in by_label.items():
        aia = [g["average_incremental_accuracy"] for g in group]
        last = [g["last_accuracy"] for g in group]
        fgt = [g["forgetting"] for g in group]
        wall = sum(g["wall_time_s"] for g in group) / len(group)
        rows[label] = {"aia": aia, "last": last, "forgetting": fgt, "wall_time_s": wall, "seeds": [g["seed"] for g in group]}
        n = f" (n={len(group)})" if len(group) != len(seeds) else ""
        print(f"{label:<18}{_fmt(aia):>16}{_fmt(last):>16}{_fmt(fgt):>16}{wall:>12.1f}{n}")

    for f in failures:
        print(f"FAILED: {f['strategy']} seed {f['seed']}: {f['error']}")

    cost: dict[str, Any] = {}
    for label in ("der", "alade-snn"):
        if label not in by_label:
            continue
        summaries = [g.get("strategy_summary", {}) for g in by_label[label]]
        ops = [s.get("ops", {}) for s in summaries if s.get("ops")]
        if not ops:
            continue
        mean = lambda key: sum(o[key] for o in ops) / len(ops)  # noqa: E731
        cost[label] = {k: mean(k) for k in ("macs_per_sample", "sops_per_sample", "dense_macs_per_sample", "energy_uj_per_sample")}
        rates = [s["mean_spike_rate"] for s in summaries if "mean_spike_rate" in s]
        if rates:
            cost[label]["mean_spike_rate"] = sum(rates) / len(rates)
    if cost:
        print("\ncost of one forward pass per sample after the last task (all extractors), mean over seeds:")
        print(f"{'':<12}{'MACs':>14}{'SOPs (ACs)':>14}{'spike rate':>12}{'energy uJ':>12}")
        for label, c in cost.items():
            rate = f"{c['mean_spike_rate']:.3f}" if "mean_spike_rate" in c else "-"
            print(f"{label:<12}{c['macs_per_sample']:>14,.0f}{c['sops_per_sample']:>14,.0f}{rate:>12}{c['energy_uj_per_sample']:>12.3f}")
        if "der" in cost and "alade-snn" in cost:
            print(f"energy ratio alade-snn / der: {cost['alade-snn']['energy_uj_per_sample'] / cost['der']['energy_uj_per_sample']:.3f}"
                  " (4.6 pJ per MAC, 0.9 pJ per accumulate, 45 nm)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_summary.json").write_text(json.dumps({"seeds": seeds, "rows": rows, "cost": cost, "failures": failures}, indent=2) + "\n")
    print(f"\nper-run results: {out}/<variant>-seed<N>/results.json; summary: {out}/bench_summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
