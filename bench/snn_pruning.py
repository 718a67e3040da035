"""SCA on split-fashion-mnist: accuracy against channel sparsity (mean ± std over seeds), and the inference time
of the slimmed network against the dense one, side by side in one process.

Each (sparsity, seed) trains ``naive`` with the spiking ResNet ``--model`` (default ``spiking-mnist``: stem,
three one-block stages at 16/32/64 channels, T = 4) on one experience of all 10 classes, with ``components=[sca]``
at that ``target_sparsity`` (sparsity 0: no component, the dense baseline), exactly as ``lifelong run --strategy
naive --benchmark split-fashion-mnist --set model=spiking-mnist --set components=[sca] --set
sca.target_sparsity=S ...`` does. Then ``slim`` removes the pruned channels; the bench checks that the slim copy
gives the masked network's logits and counts parameters and multiply-accumulates of both. The timing takes the
run of the highest sparsity of the first seed and times one forward of a test batch through the masked (dense)
and the slim network alternately, ``--repeats`` times each, and reports the medians and their ratio with the
load average before and after. One torch thread.

    nice -n 5 .venv/bin/python bench/snn_pruning.py --seeds 0,1,2 --sparsities 0,0.5,0.75
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


def train(sparsity: float, seed: int, args: argparse.Namespace) -> Path:
    from lifelong.incremental.run import resolve_config, run_experiment

    folder = Path(args.out) / f"s{sparsity:g}-seed{seed}"
    overrides: dict[str, Any] = {"model": args.model, "n_experiences": 1, "train_per_class": args.train_per_class,
                                 "test_per_class": args.test_per_class, "epochs": args.epochs, "lr": args.lr,
                                 "weight_decay": args.weight_decay}
    if sparsity > 0:
        overrides.update(components=["sca"], sca={"target_sparsity": sparsity, "ramp": args.ramp,
                                                  "score": args.score})
    if not (folder / "results.json").exists() or args.fresh:
        config = resolve_config(strategy="naive", benchmark="split-fashion-mnist", seed=seed, device="cpu",
                                overrides=overrides)
        run_experiment(config, out=folder, progress=False)
    return folder


def measure(folder: Path) -> dict[str, Any]:
    """Accuracy, sparsity, parameters and MACs of the masked model and its slim copy (logits compared)."""
    import torch

    from lifelong.adapters.nets.spiking import count_ops
    from lifelong.components.sca import find_units, pruned_channels, slim
    from lifelong.incremental.convert import load_finished_run

    results, learner, stream = load_finished_run(folder, torch.device("cpu"))
    model = learner.model.eval()
    small = slim(model).eval()
    data = stream.test_stream[0].dataset
    data = data.eval() if hasattr(data, "eval") else data
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    with torch.no_grad():
        dense_logits, slim_logits = model(x), small(x)
    pruned = pruned_channels(model)
    total = sum(len(m) for m in pruned.values())
    macs = {}
    for name, net in (("dense", model), ("slim", small)):
        ops = count_ops(net, lambda net=net: net(x[:64]), 64)
        macs[name] = ops.dense_macs
    return {
        "accuracy": results["last_accuracy"],
        "slim_accuracy": float((slim_logits.argmax(1) == y).float().mean()),
        "max_logit_diff": float((dense_logits - slim_logits).abs().max()),
        "channel_sparsity": sum(int(m.sum()) for m in pruned.values()) / total if total else 0.0,
        "params": {"dense": sum(p.numel() for p in model.parameters()),
                   "slim": sum(p.numel() for p in small.parameters())},
        "macs_per_sample": macs,
        "units": [u.name for u in find_units(model)],
        "train_s": results["wall_time_s"],
    }


def timing(folder: Path, batch: int, repeats: int) -> dict[str, Any]:
    """Median forward time of the masked and the slim network, interleaved (one, then the other, ``repeats``)."""
    import torch

    from lifelong.components.sca import slim
    from lifelong.incremental.convert import load_finished_run

    _, learner, stream = load_finished_run(folder, torch.device("cpu"))
    model = learner.model.eval()
    small = slim(model).eval()
    data = stream.test_stream[0].dataset
    data = data.eval() if hasattr(data, "eval") else data
    x = torch.stack([data[i][0] for i in range(min(batch, len(data)))])
    times: dict[str, list[float]] = {"dense": [], "slim": []}
    load_before = os.getloadavg()
    with torch.no_grad():
        for net in (model, small):  # warm-up
            net(x)
        for _ in range(repeats):
            for name, net in (("dense", model), ("slim", small)):
                t0 = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": int(x.shape[0]), "repeats": repeats, "median_s": med, "speedup": med["dense"] / med["slim"],
            "load_before": load_before, "load_after": os.getloadavg()}


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    import numpy as np

    a = scale * np.asarray(values, dtype=float)
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sparsities", default="0,0.5,0.75")
    p.add_argument("--model", default="spiking-mnist")
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--ramp", type=int, default=2)
    p.add_argument("--score", default="potential")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-snn-pruning")
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    print(f"load before: {os.getloadavg()}", flush=True)
    rows: dict[float, list[dict[str, Any]]] = {}
    for sparsity in sparsities:
        for seed in seeds:
            m = measure(train(sparsity, seed, args))
            rows.setdefault(sparsity, []).append(m)
            print(f"target {sparsity:g} seed {seed}: accuracy {100 * m['accuracy']:.2f} (slim {100 * m['slim_accuracy']:.2f}, "
                  f"max logit diff {m['max_logit_diff']:.2e}), channel sparsity {m['channel_sparsity']:.3f}, "
                  f"train {m['train_s']:.0f} s", flush=True)
    print(f"\nsplit-fashion-mnist, one experience of 10 classes, {args.model}, naive, {args.epochs} epochs, "
          f"{args.train_per_class} train / {args.test_per_class} test images a class, SGD lr {args.lr} weight decay "
          f"{args.weight_decay}, sca score={args.score} "
          f"ramp={args.ramp}, seeds {args.seeds}")
    print("| target sparsity | pruned channels (prunable) | accuracy (%) | slim = masked (max logit diff) "
          "| parameters dense / slim | MACs per sample (all T steps) dense / slim |")
    print("|---|---|---|---|---|---|")
    for sparsity, runs in rows.items():
        r0 = runs[0]
        diff = max(r["max_logit_diff"] for r in runs)
        print(f"| {sparsity:g} | {fmt([r['channel_sparsity'] for r in runs], 1, 3)} | "
              f"{fmt([r['accuracy'] for r in runs])} | {diff:.1e} | {r0['params']['dense']:,} / {r0['params']['slim']:,} "
              f"| {r0['macs_per_sample']['dense'] / 1e6:.2f} M / {r0['macs_per_sample']['slim'] / 1e6:.2f} M |")
    top = max(sparsities)
    t = timing(Path(args.out) / f"s{top:g}-seed{seeds[0]}", args.batch, args.repeats)
    print(f"\ninference, target sparsity {top:g} seed {seeds[0]}, batch {t['batch']}, {args.threads} thread(s), "
          f"{t['repeats']} interleaved repeats: dense (masked) {1000 * t['median_s']['dense']:.1f} ms, slim "
          f"{1000 * t['median_s']['slim']:.1f} ms (median), dense / slim = {t['speedup']:.2f}; load average "
          f"{t['load_before'][0]:.2f} before, {t['load_after'][0]:.2f} after")
    from lifelong.platform.atomic import atomic_write_text

    atomic_write_text(Path(args.out) / "summary.json",
                      json.dumps({"runs": {str(k): v for k, v in rows.items()}, "timing": t}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
