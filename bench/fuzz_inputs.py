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
    tried = [line for line in proc.stdout.splitlines() if "passing examples" in line]
    print(proc.stdout[-6000:] if proc.returncode else "\n".join(tried))
    total = sum(int(line.split()[1]) for line in tried if line.split()[1].isdigit())
    failed = sum(int(line.split()[0]) for line in proc.stdout.splitlines()[-1:] if "failed" in line)
    print(f"properties: {len(tried)}, examples per property asked: {args.examples}, passing examples in all: {total}, "
          f"failing properties: {failed}, wall {wall:.0f} s")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
