"""The input-fuzzing campaign at a large budget: tests/test_fuzz_inputs.py's properties (JSON Lines readers of edit,
preference and reward files; the IDX reader, gzipped or not; run configs from ``--set`` values and from YAML files
of any text) and tests/test_fuzz_surfaces.py's (the arguments of every CLI command, the server's request bodies,
PEFT adapter folders, reward-model folders), each run with ``--examples`` examples (a quarter of that for the CLI
and server properties, which cost more per case), and a count of cases tried and failures found.

    .venv/bin/python bench/fuzz_inputs.py --examples 5000

A failure prints hypothesis's minimal failing example and makes the script exit 1. docs/reliability.md quotes the
run's figures.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ("tests/test_fuzz_inputs.py", "tests/test_fuzz_surfaces.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples per property (default 5000)")
    args = parser.parse_args()
    env = {**os.environ, "LIFELONG_FUZZ_EXAMPLES": str(args.examples), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "--hypothesis-show-statistics", *FILES],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    # hypothesis's statistics: one block per property, one "N passing, M failing, and K invalid" line per phase
    counts: dict[str, list[int]] = {}
    outcomes: dict[str, list[str]] = {}  # the CLI's exit codes and the server's statuses (hypothesis events)
    prop = None
    for line in proc.stdout.splitlines():
        if line.startswith(tuple(f"{f}::" for f in FILES)):
            prop = line.split("::", 1)[1].rstrip(":")
            counts[prop] = [0, 0, 0]
        outcome = re.search(r"\* ([\d.]+%), ((?:exit|status|still) .*)", line)
        if prop and outcome:
            outcomes.setdefault(prop, []).append(f"{outcome.group(2)} {outcome.group(1)}")
        found = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", line)
        if prop and found:
            counts[prop] = [a + int(b) for a, b in zip(counts[prop], found.groups())]
    if proc.returncode:
        print(proc.stdout[-6000:])
    for name, (passing, failing, invalid) in counts.items():
        print(f"{name}: {passing + failing} cases tried, {failing} failing ({invalid} invalid draws discarded)"
              + (f"; outcomes: {', '.join(outcomes[name])}" if name in outcomes else ""))
    print(f"properties {len(counts)}, cases tried {sum(p + f for p, f, _ in counts.values())}, failing cases "
          f"{sum(f for _, f, _ in counts.values())}, examples asked per property {args.examples}, wall {wall:.0f} s")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
