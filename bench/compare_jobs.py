"""``lifelong compare --jobs 2`` against the serial ``compare`` on the same runs: wall time and identical summaries.

Each repeat runs the command twice as a user would, in fresh processes (imports included), serial first or
parallel first in turn, so that machine noise hits both alike. The runs default to the baseline comparison of
``lifelong demo`` (eight strategies, seeds 0, 1, 2, split-digits with its defaults). It prints each command's
time, the ratio serial / parallel per repeat and its median, the load average, and checks that the two
summary.json files are identical once the wall times are left out. ``--ray`` adds a third command,
``compare --backend ray`` (a local Ray instance started by the command), timed and checked the same way.

What bounds the ratio is measured too: each repeat times a fresh process that only makes the imports every run
needs (``compare._preload``), the start-up S that a serial and a parallel command both pay before any run; the
rest of the serial command, W, is what two workers can share, so serial / parallel can be at most
(S + W) / (S + W / jobs).

    .venv/bin/python bench/compare_jobs.py                      # the demo's 24 runs, 3 repeats
    .venv/bin/python bench/compare_jobs.py --repeats 1 --strategies naive,replay --seeds 0,1   # a quick look
    .venv/bin/python bench/compare_jobs.py --ray                # and --backend ray beside them
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = "naive,ewc,lwf,replay,icarl,gdumb,dark-er,joint"  # lifelong/cli/demo.py, DEMO_STRATEGIES


def run(args: list[str], out: Path) -> float:
    """Seconds the command ``lifelong compare ARGS --out OUT`` takes, start to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lifelong", "compare", *args, "--out", str(out), "--json"], check=True,
                   stdout=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def startup() -> float:
    """Seconds a fresh process takes to import what every run needs (torch, Avalanche, the plugins) and exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from lifelong.incremental import compare; compare._preload()"],
                   check=True, cwd=REPO)
    return time.perf_counter() - start


def without_wall_times(path: Path) -> dict:
    summary = json.loads(path.read_text())
    for entry in summary["strategies"].values():
        entry.pop("wall_time_s")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=DEMO)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also time compare --backend ray")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    common = ["--strategies", args.strategies, "--seeds", args.seeds]
    for pair in args.overrides:
        common += ["--set", pair]
    modes = {"serial": ["--jobs", "1"], "parallel": ["--jobs", str(args.jobs)]}
    if args.ray:
        modes["ray"] = ["--backend", "ray"]
    times: dict[str, list[float]] = {name: [] for name in [*modes, "startup"]}
    identical = True
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            order = list(modes)
            for name in order if k % 2 == 0 else order[::-1]:
                times[name].append(run([*common, *modes[name]], Path(tmp) / f"{name}{k}"))
            times["startup"].append(startup())
            reference = without_wall_times(Path(tmp) / f"serial{k}" / "summary.json")
            identical &= all(without_wall_times(Path(tmp) / f"{name}{k}" / "summary.json") == reference
                             for name in modes)
            print(f"repeat {k}: " + ", ".join(f"{name} {times[name][-1]:.1f} s" for name in times)
                  + f", ratio {times['serial'][-1] / times['parallel'][-1]:.2f}", flush=True)
    report(args, times, load_before, identical)
    if not identical:
        sys.exit(1)


def report(args: argparse.Namespace, times: dict[str, list[float]], load_before: float, identical: bool) -> None:
    """The medians, the ratios per repeat, the bound the start-up leaves, and whether the summaries agree."""
    median = {name: statistics.median(values) for name, values in times.items()}
    n_runs = len(args.strategies.split(",")) * len(args.seeds.split(","))
    print(f"compare of {n_runs} runs ({args.strategies}; seeds {args.seeds}), {args.repeats} repeats, "
          f"{os.cpu_count()} cores, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("  medians: " + ", ".join(f"{name} {value:.1f} s" for name, value in median.items()))
    for name in [n for n in times if n not in ("serial", "startup")]:
        ratios = [s / p for s, p in zip(times["serial"], times[name])]
        label = f"--jobs {args.jobs}" if name == "parallel" else "--backend ray"
        print(f"  speed-up serial / {label}: median {statistics.median(ratios):.2f} "
              f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
    s, w = median["startup"], max(median["serial"] - median["startup"], 0.0)
    print(f"  start-up S {s:.1f} s, the rest of the serial command W {w:.1f} s: at most "
          f"(S + W) / (S + W / {args.jobs}) = {(s + w) / (s + w / args.jobs):.2f} with {args.jobs} jobs")
    for name in [n for n in times if n not in ("serial", "startup")]:
        print(f"  after the start-up, serial W / {name} (its command less S): "
              f"{w / max(median[name] - s, 1e-9):.2f}")
    print(f"  summaries identical except wall times: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
