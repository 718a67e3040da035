"""The input-fuzzing campaign at a large budget: tests/test_fuzz_inputs.py's properties (JSON Lines readers of edit,
preference and reward files; the IDX reader, gzipped or not; run configs from ``--set`` values and from YAML files
of any text), each run with ``--examples`` examples, and a count of cases tried and failures found.

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples per property (default 5000)")
    args = parser.parse_args()
    env = {**os.environ, "LIFELONG_FUZZ_EXAMPLES": str(args.examples), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "--hypothesis-show-statistics", "tests/test_fuzz_inputs.py"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    # hypothesis's statistics: one block per property, one "N passing, M failing, and K invalid" line per phase
    counts: dict[str, list[int]] = {}
    prop = None
    for line in proc.stdout.splitlines():
        if line.startswith("tests/test_fuzz_inputs.py::"):
            prop = line.split("::", 1)[1].rstrip(":")
            counts[prop] = [0, 0, 0]
        found = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", line)
        if prop and found:
            counts[prop] = [a + int(b) for a, b in zip(counts[prop], found.groups())]
    if proc.returncode:
        print(proc.stdout[-6000:])
    for name, (passing, failing, invalid) in counts.items():
        print(f"{name}: {passing + failing} cases tried, {failing} failing ({invalid} invalid draws discarded)")
    print(f"properties {len(counts)}, cases tried {sum(p + f for p, f, _ in counts.values())}, failing cases "
          f"{sum(f for _, f, _ in counts.values())}, examples asked per property {args.examples}, wall {wall:.0f} s")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
