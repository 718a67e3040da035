"""ECL conversion on split-fashion-mnist: the converted SNN's accuracy at T = 1, 2, 4, 8 against its ANN and
against plain conversion, over several seeds (mean ± std).

Each seed trains ``naive`` on one experience of all 10 classes (``n_experiences=1``; ``--train-per-class`` and
``--test-per-class`` seeded subsets) on every clip backbone of ``--models`` (``cnn-28-clip``: continuous clip;
``cnn-28-clip4``: rounded to 4 levels in training), exactly as ``lifelong run --strategy naive --benchmark
split-fashion-mnist --set model=M --set n_experiences=1 ...`` does, then converts the run with the code of
``lifelong convert`` under five schemes: ``plain`` (v(0)=0, positive spikes), ``ecl`` (v(0)=theta/2,
dual threshold), ``ecl-opt`` (dual threshold, v(0) optimised per layer and T on 256 training images) and the
two halves of ECL alone (``init-only``, ``dual-only``). One torch thread per run.
Needs the Fashion-MNIST files (``make data``).

    nice -n 5 .venv/bin/python bench/snn_conversion.py --seeds 0,1,2 --train-per-class 300 --test-per-class 200
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

SCHEMES = ("plain", "init-only", "dual-only", "ecl", "ecl-opt")


def train(model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The finished run of ``model`` and ``seed`` (reused from ``--out`` unless ``--fresh``)."""
    import torch

    from lifelong.incremental.run import resolve_config, run_experiment

    torch.set_num_threads(args.threads)
    folder = Path(args.out) / f"{model}-seed{seed}"
    overrides = {"model": model, "n_experiences": 1, "train_per_class": args.train_per_class,
                 "test_per_class": args.test_per_class, "epochs": args.epochs, "lr": args.lr}
    if (folder / "results.json").exists() and not args.fresh:
        return json.loads((folder / "results.json").read_text())
    config = resolve_config(strategy="naive", benchmark="split-fashion-mnist", seed=seed, device="cpu",
                            overrides=overrides)
    return run_experiment(config, out=folder, progress=False)


def one(model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lifelong.incremental.convert import convert_run

    folder = Path(args.out) / f"{model}-seed{seed}"
    t0 = time.perf_counter()
    train(model, seed, args)
    t1 = time.perf_counter()
    done = folder / "conversion.json"
    if done.exists() and not args.fresh:  # a conversion of the same schemes and steps is reused
        saved = json.loads(done.read_text())
        if saved.get("timesteps") == args.timesteps and set(saved.get("schemes", {})) == set(SCHEMES):
            saved["train_s"], saved["convert_s"] = t1 - t0, 0.0
            return saved
    result = convert_run(folder, args.timesteps, list(SCHEMES), torch.device("cpu"))
    result["train_s"], result["convert_s"] = t1 - t0, time.perf_counter() - t1
    return result


def fmt(values: list[float]) -> str:
    import numpy as np

    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():6.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:4.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="cnn-28-clip,cnn-28-clip4")
    p.add_argument("--reference", default="cnn-28", help="the ReLU twin, trained alike for its ANN accuracy ('' skips)")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--timesteps", default="1,2,4,8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-snn-conversion")
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args(argv)
    args.timesteps = sorted({int(t) for t in args.timesteps.split(",")})
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"load before: {os.getloadavg()}", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        for seed in seeds:
            r = one(model, seed, args)
            rows.setdefault(model, []).append(r)
            print(f"{model} seed {seed}: ANN {100 * r['ann']['accuracy']:.2f}, ecl T=2 "
                  f"{100 * r['schemes']['ecl']['by_timestep']['2']['accuracy']:.2f}, plain T=2 "
                  f"{100 * r['schemes']['plain']['by_timestep']['2']['accuracy']:.2f} "
                  f"(train {r['train_s']:.0f} s, convert {r['convert_s']:.0f} s)", flush=True)
    reference = []
    for seed in seeds if args.reference else []:
        reference.append(train(args.reference, seed, args))
    print(f"load after: {os.getloadavg()}")
    print(f"\nsplit-fashion-mnist, one experience of 10 classes, {args.train_per_class} train / {args.test_per_class} "
          f"test images a class, naive, {args.epochs} epochs, seeds {args.seeds}: accuracy (%), mean ± std")
    if reference:
        print(f"\n{args.reference} (the ReLU twin, max pooling, not converted): ANN "
              f"{fmt([r['last_accuracy'] for r in reference])}")
    for model, runs in rows.items():
        print(f"\n{model}: ANN {fmt([r['ann']['accuracy'] for r in runs])}; thresholds (seed {seeds[0]}): "
              + ", ".join(f"{v:.2f}" for v in runs[0]["thresholds"].values()))
        print(f"| T | {' | '.join(SCHEMES)} | ecl - ANN | ecl-opt - ANN |")
        print("|---|" + "---|" * (len(SCHEMES) + 2))
        for t in args.timesteps:
            cells = [fmt([r["schemes"][s]["by_timestep"][str(t)]["accuracy"] for r in runs]) for s in SCHEMES]
            gap = fmt([r["schemes"]["ecl"]["by_timestep"][str(t)]["accuracy"] - r["ann"]["accuracy"] for r in runs])
            gap_opt = fmt([r["schemes"]["ecl-opt"]["by_timestep"][str(t)]["accuracy"] - r["ann"]["accuracy"]
                           for r in runs])
            print(f"| {t} | {' | '.join(cells)} | {gap} | {gap_opt} |")
        starts = "; ".join(f"T={t}: " + ", ".join(f"{v:.3f}" for v in runs[0]["schemes"]["ecl-opt"]["v_init_by_timestep"][str(t)])
                           for t in args.timesteps)
        print(f"ecl-opt's starts per layer, seed {seeds[0]} (fractions of theta): {starts}")
        rates = ", ".join(f"{s} {sum(r['schemes'][s]['spike_rate_at_max_t'] for r in runs) / len(runs):.3f}"
                          for s in SCHEMES)
        print(f"spike rate at T={args.timesteps[-1]} (spikes per neuron and step, mean over seeds): {rates}")
    summary = {model: runs for model, runs in rows.items()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from lifelong.platform.atomic import atomic_write_text

    atomic_write_text(Path(args.out) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
