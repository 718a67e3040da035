"""Event-camera evidence (docs/events.md), on simulated events (a stand-in for Gen1 and the fall-detection set):

1. detection on ``event-detection``: HsVT against a recurrent ANN detector of the same size (conv-LSTM) and a
   pure spiking detector with the same head; mAP@0.5 and @0.5:0.95 on all frames and on the objects that have
   stopped (frames after a fall, which emit no events), parameters, operations per frame;
2. the temporal module's value: HsVT with its state cleared at every bin (``memory=false``);
3. HsVT as a class-incremental backbone on ``split-event-fashion-mnist`` against the spiking ResNet
   (``spiking-mnist``), with the ``replay`` strategy.

Every run is a ``python -m lifelong detect`` / ``run`` command (printed before it starts), one folder each under
``--out``; ``--jobs`` runs that many at once, each with one torch thread. Runs whose results.json exists are
not repeated, so an interrupted bench continues. Mean ± sample std over seeds and a 95 % t interval.

    .venv/bin/python bench/events.py --out runs/events --seeds 0,1,2 --jobs 2
    .venv/bin/python bench/events.py --out runs/events --seeds 0,1,2 --aggregate   # tables only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cil_fashion import t_interval  # noqa: E402  (the benches share one t-interval)

DETECT = {"hsvt": ["--model", "hsvt"], "hsvt-no-memory": ["--model", "hsvt", "--set", "memory=false"],
          "conv-lstm": ["--model", "conv-lstm"], "spiking": ["--model", "spiking"]}
CIL = {"hsvt": "hsvt", "spiking-resnet": "spiking-mnist"}


def detect_args(args: argparse.Namespace) -> list[str]:
    return ["--set", f"n_train={args.n_train}", "--set", f"n_test={args.n_test}", "--set", f"epochs={args.epochs}",
            "--set", f"dim={args.dim}"]


def cil_args(args: argparse.Namespace) -> list[str]:
    return ["--set", f"train_per_class={args.cil_train}", "--set", f"test_per_class={args.cil_test}",
            "--set", f"epochs={args.cil_epochs}", "--set", "n_bins=6", "--set", "mem_size=200",
            "--set", "optimizer=adam", "--set", "lr=0.001"]


def jobs(args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    out, todo = Path(args.out), []
    for seed in args.seeds:
        for name, extra in DETECT.items():
            folder = out / "detect" / f"{name}-{seed}"
            todo.append((folder, ["detect", *extra, *detect_args(args), "--seed", str(seed), "--out", str(folder)]))
        for name, model in CIL.items():
            folder = out / "cil" / f"{name}-{seed}"
            todo.append((folder, ["run", "--strategy", "replay", "--benchmark", "split-event-fashion-mnist",
                                  "--set", f"model={model}", *cil_args(args), "--seed", str(seed), "--out", str(folder)]))
    return todo


def run_one(folder: Path, cli: list[str]) -> None:
    if (folder / "results.json").is_file():
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print("python -m lifelong " + " ".join(cli), flush=True)
    done = subprocess.run([sys.executable, "-m", "lifelong", *cli], env=env, capture_output=True, text=True)
    if done.returncode:
        print(f"FAILED ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}", flush=True)


def summary(values: list[float]) -> str:
    """mean ± std [95 % t interval] in percent (or as is for counts)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return f"{v.mean():.1f}"
    mean, low, high = t_interval(values, scale=1.0)
    return f"{mean:.1f} ± {v.std(ddof=1):.1f} [{low:.1f}, {high:.1f}]"


def interval(values: list[float]) -> str:
    """mean [95 % t interval] (of paired differences)."""
    mean, low, high = t_interval(values, scale=1.0)
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def load(folder: Path) -> dict | None:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def tables(args: argparse.Namespace) -> str:
    out = Path(args.out)
    lines = ["Detection on event-detection (simulated events, a stand-in), "
             f"seeds {','.join(map(str, args.seeds))}: mAP in %, mean ± std [95 % t interval]", "",
             "| detector | runs | mAP@0.5 | mAP@0.5:0.95 | stopped objects mAP@0.5 | parameters | MACs / frame | SOPs / frame | energy / frame |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in DETECT:
        runs = [r for s in args.seeds if (r := load(out / "detect" / f"{name}-{s}"))]
        if not runs:
            continue
        ops = runs[0]["ops_per_frame"]
        lines.append(f"| {name} | {len(runs)} | {summary([100 * r['map_50'] for r in runs])} | "
                     f"{summary([100 * r['map'] for r in runs])} | {summary([100 * r['still_map_50'] for r in runs])} | "
                     f"{runs[0]['parameters']:,} | {ops['macs'] / 1e6:.2f} M | "
                     f"{np.mean([r['ops_per_frame']['sops'] for r in runs]) / 1e6:.2f} M | "
                     f"{np.mean([r['ops_per_frame']['energy_nj'] for r in runs]) / 1e3:.1f} µJ |")
    lines += ["", "Paired differences, HsVT minus each other detector on the same seeds (points of mAP, mean [95 % t "
              "interval]):", ""]
    for other in ("hsvt-no-memory", "conv-lstm", "spiking"):
        pairs = [(a, b) for s in args.seeds if (a := load(out / "detect" / f"hsvt-{s}"))
                 and (b := load(out / "detect" / f"{other}-{s}"))]
        if len(pairs) >= 2:
            cells = [f"{key} {interval([100 * (a[key] - b[key]) for a, b in pairs])}"
                     for key in ("map_50", "map", "still_map_50")]
            lines.append(f"- vs {other} ({len(pairs)} seeds): " + "; ".join(cells))
    lines += ["", "Class-incremental: replay (200 samples, Adam 0.001) on split-event-fashion-mnist (5 experiences of 2 "
              "classes, 100 training and 50 test images a class), accuracy in %", "", "| backbone | runs | average incremental accuracy | last accuracy | forgetting |",
              "|---|---|---|---|---|"]
    for name in CIL:
        runs = [r for s in args.seeds if (r := load(out / "cil" / f"{name}-{s}"))]
        if runs:
            lines.append(f"| {name} | {len(runs)} | {summary([100 * r['average_incremental_accuracy'] for r in runs])} | "
                         f"{summary([100 * r['last_accuracy'] for r in runs])} | "
                         f"{summary([100 * r['forgetting'] for r in runs])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/events")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=192)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--cil-train", type=int, default=100)
    parser.add_argument("--cil-test", type=int, default=50)
    parser.add_argument("--cil-epochs", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated: detect, cil (default both)")
    parser.add_argument("--aggregate", action="store_true", help="print the tables of the runs there are")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.aggregate:
        todo = [(f, c) for f, c in jobs(args) if not args.only or c[0] in ("detect" if "detect" in args.only else "",
                                                                           "run" if "cil" in args.only else "")]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_one(*job), todo))
    print(tables(args))


if __name__ == "__main__":
    main()
