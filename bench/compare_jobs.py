"""``lifelong compare --jobs 2`` against the serial ``compare`` on the same runs: wall time and identical summaries.

Each repeat runs the command twice as a user would, in fresh processes (imports included), serial first or
parallel first in turn, so that machine noise hits both alike. The runs default to the baseline comparison of
``lifelong demo`` (eight strategies, seeds 0, 1, 2, split-digits with its defaults). It prints each command's
time, the ratio serial / parallel per repeat and its median, the load average, and checks that the two
summary.json files are identical once the wall times are left out.

    .venv/bin/python bench/compare_jobs.py                      # the demo's 24 runs, 3 repeats
    .venv/bin/python bench/compare_jobs.py --repeats 1 --strategies naive,replay --seeds 0,1   # a quick look
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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    common = ["--strategies", args.strategies, "--seeds", args.seeds]
    for pair in args.overrides:
        common += ["--set", pair]
    serial, parallel, identical = [], [], True
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            order = [("serial", 1), ("parallel", args.jobs)]
            for name, jobs in order if k % 2 == 0 else order[::-1]:
                seconds = run([*common, "--jobs", str(jobs)], Path(tmp) / f"{name}{k}")
                (serial if jobs == 1 else parallel).append(seconds)
            identical &= without_wall_times(Path(tmp) / f"serial{k}" / "summary.json") == \
                without_wall_times(Path(tmp) / f"parallel{k}" / "summary.json")
            print(f"repeat {k}: serial {serial[-1]:.1f} s, --jobs {args.jobs} {parallel[-1]:.1f} s, "
                  f"ratio {serial[-1] / parallel[-1]:.2f}", flush=True)
    ratios = [s / p for s, p in zip(serial, parallel)]
    n_runs = len(args.strategies.split(",")) * len(args.seeds.split(","))
    print(f"compare of {n_runs} runs ({args.strategies}; seeds {args.seeds}), {args.repeats} repeats, "
          f"{os.cpu_count()} cores, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"  serial: median {statistics.median(serial):.1f} s; --jobs {args.jobs}: median "
          f"{statistics.median(parallel):.1f} s")
    print(f"  speed-up serial / --jobs {args.jobs}: median {statistics.median(ratios):.2f} "
          f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"  summaries identical except wall times: {'yes' if identical else 'NO'}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
