"""Evidence for docs/few-shot.md: FSL-SNN against its baselines and ablations on N-way K-shot episodes, its
operations per episode, and few-shot class-incremental (FSCIL) accuracy per stage.

    python bench/fewshot.py episodes --datasets digits --shots 1,5 --seeds 0 --out runs/bench-fewshot
    python bench/fewshot.py fscil --seeds 0,1 --out runs/bench-fewshot
    python bench/fewshot.py table --out runs/bench-fewshot          # the markdown tables of what has finished

Every run writes its own results.json under --out and is skipped when that file exists, so the command can be
stopped and started again. The sizes are small so that it finishes on two shared CPU cores: they are printed
with the tables (train episodes, queries, the per-class subsets of Fashion-MNIST, a stand-in here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lifelong.incremental.fewshot import resolve_fewshot_config, run_fewshot
from lifelong.incremental.run import resolve_config, run_experiment

#: each variant as the options it changes on ``fsl-snn``
VARIANTS: dict[str, dict[str, Any]] = {
    "fsl-snn": {},
    "proto-snn": {"self_module": False, "cross_module": False, "infonce_weight": 0.0, "loss": "ce"},
    "ann-twin": {"spiking": False},
    "no-self": {"self_module": False},
    "no-cross": {"cross_module": False},
    "no-infonce": {"infonce_weight": 0.0},
    "no-tet": {"loss": "ce"},
}
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"benchmark": "split-digits", "bench": {}},
    # Fashion-MNIST as a stand-in for the paper's image sets: 300 training and 100 test images a class
    "fashion": {"benchmark": "split-fashion-mnist", "bench": {"train_per_class": 300, "test_per_class": 100},
                "method": {"model": "spiking-mnist-half"}},
}


def episodes(args: argparse.Namespace) -> None:
    """One ``lifelong fewshot`` run per (dataset, shots, variant, seed)."""
    for seed in _ints(args.seeds):
        for dataset in args.datasets.split(","):
            for k in _ints(args.shots):
                for variant in args.variants.split(","):
                    out = Path(args.out) / "episodes" / dataset / f"{k}shot" / variant / str(seed)
                    if (out / "results.json").exists():
                        continue
                    spec = DATASETS[dataset]
                    overrides = {"k_shot": k, "n_way": 5, "n_query": args.queries, "train_episodes": args.train_episodes,
                                 "val_every": args.train_episodes, "test_episodes": args.test_episodes,
                                 **spec["bench"], **spec.get("method", {}), **VARIANTS[variant]}
                    config = resolve_fewshot_config(method="fsl-snn", benchmark=spec["benchmark"], seed=seed,
                                                    overrides=overrides, device="cpu")
                    r = run_fewshot(config, out=out)
                    print(f"{dataset} {k}-shot {variant:<11} seed {seed}: {100 * r['test']['accuracy']:.2f} ± "
                          f"{100 * r['test']['ci95']:.2f}  ({r['train_time_s']:.0f} s training)", flush=True)


FSCIL_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "fsl-snn": ("fsl-snn", {}),
    "prototype": ("fsl-snn", VARIANTS["proto-snn"]),
    "fine-tuning": ("naive", {"model": "spiking-tiny"}),
}


def fscil(args: argparse.Namespace) -> None:
    """split-digits as FSCIL: a base stage of 4 classes, then 3 stages of 2 new classes with 5 shots each."""
    stream = {"initial_classes": 4, "n_experiences": 4, "shots": 5, "task_labels": False}
    for seed in _ints(args.seeds):
        for name, (strategy, options) in FSCIL_METHODS.items():
            out = Path(args.out) / "fscil" / name / str(seed)
            if (out / "results.json").exists():
                continue
            extra = {"epochs": 8, "episodes_per_epoch": 25} if strategy == "fsl-snn" else {"epochs": 10}
            config = resolve_config(strategy=strategy, benchmark="split-digits", seed=seed, device="cpu",
                                    overrides={**stream, **extra, **options})
            r = run_experiment(config, out=out, progress=False)
            print(f"fscil {name:<12} seed {seed}: " + " ".join(f"{100 * a:.1f}" for a in r["seen_accuracy"]), flush=True)


def table(args: argparse.Namespace) -> None:
    """The markdown tables of every finished run under --out."""
    import numpy as np

    root = Path(args.out)
    for dataset_dir in sorted((root / "episodes").glob("*")):
        print(f"\n{dataset_dir.name}: 5-way accuracy over the test episodes, % (mean ± 95 % interval), per seed\n")
        shots = sorted(p.name for p in dataset_dir.glob("*shot"))
        print("| variant | " + " | ".join(shots) + " | " + " | ".join(f"SOPs / MACs / µJ per {k} episode" for k in shots)
              + " |")
        print("|---|" + "---|" * (2 * len(shots)))
        for variant in VARIANTS:
            cells, costs = [], []
            for k in shots:
                runs = [json.loads(p.read_text()) for p in sorted((dataset_dir / k / variant).glob("*/results.json"))]
                cells.append("; ".join(f"{100 * r['test']['accuracy']:.1f} ± {100 * r['test']['ci95']:.1f}"
                                       for r in runs) or "–")
                c = runs[0]["cost_per_episode"] if runs else None
                costs.append(f"{c['sops'] / 1e6:.1f} M / {c['macs'] / 1e6:.1f} M / {c['energy_uj']:.0f}" if c else "–")
            print(f"| {variant} | " + " | ".join(cells + costs) + " |")
    fscil_dir = root / "fscil"
    if fscil_dir.exists():
        print("\nFSCIL on split-digits (4 base classes, then 3 stages of 2-way 5-shot): accuracy on all classes seen "
              "after each stage, %, mean ± std over seeds\n")
        print("| method | seeds | base | +2 | +4 | +6 | AIA |")
        print("|---|---|---|---|---|---|---|")
        for name in FSCIL_METHODS:
            runs = [json.loads(p.read_text()) for p in sorted((fscil_dir / name).glob("*/results.json"))]
            if not runs:
                continue
            seen = np.array([r["seen_accuracy"] for r in runs]) * 100
            aia = np.array([r["average_incremental_accuracy"] for r in runs]) * 100
            sd = seen.std(0, ddof=1) if len(runs) > 1 else np.zeros(seen.shape[1])
            print(f"| {name} | {len(runs)} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(seen.mean(0), sd))
                  + f" | {aia.mean():.1f} |")


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("episodes", "fscil", "table"))
    parser.add_argument("--out", default="runs/bench-fewshot")
    parser.add_argument("--datasets", default="digits")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train-episodes", type=int, default=200)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--queries", type=int, default=15)
    args = parser.parse_args(argv)
    {"episodes": episodes, "fscil": fscil, "table": table}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
