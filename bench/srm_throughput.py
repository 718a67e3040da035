"""Scoring throughput of the structural reward model: pairs per second, branches in parallel vs one after another.

Every measurement uses a fresh in-memory cache (``cache_dir=":memory:"``), so each branch really runs; the
models (sentence encoder, local LM) are loaded and warmed up before the clock starts. Reports per-branch
seconds too, so the cost of each dimension is visible.

Run: ``.venv/bin/python bench/srm_throughput.py [--pairs 32] [--branches semantic,fact-check,style,fluency,quality]``
"""

from __future__ import annotations

import argparse
import json
import time

from lifelong.benchmarks.preferences import bundled_preferences
from lifelong.scorers.branches import BRANCH_NAMES, Branch, FactCheckBranch, make_branches, run_branches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--branches", default=",".join(BRANCH_NAMES))
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    names = args.branches.split(",")
    pairs = bundled_preferences("heldout")[: args.pairs]
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]

    def build() -> list[Branch]:
        return make_branches(names, encoder="all-minilm-l6-v2", llm="smollm2-135m", facts=["bundled"],
                             store=None, fact_threshold=0.6, batch_size=16)

    warm = build()
    run_branches(warm, items[:4], None, parallel=False)  # load and warm every model
    import torch

    print(f"torch threads: {torch.get_num_threads()}; {len(pairs)} pairs = {len(items)} responses; branches {names}")
    per_branch = {}
    for b in build():
        t = time.perf_counter()
        b.compute(items)
        per_branch[b.name] = time.perf_counter() - t
    rows = {}
    for mode, parallel in (("serial", False), ("parallel", True)):
        times = []
        for _ in range(args.repeats):
            branches = build()
            for b in branches:
                if isinstance(b, FactCheckBranch):
                    b.knowledge()  # reading the fact file is set-up, not scoring
            t = time.perf_counter()
            run_branches(branches, items, None, parallel=parallel)
            times.append(time.perf_counter() - t)
        best = min(times)
        rows[mode] = {"seconds": round(best, 2), "pairs_per_s": round(len(pairs) / best, 3)}
    print(json.dumps({"per_branch_seconds": {k: round(v, 2) for k, v in per_branch.items()}, **rows}, indent=2))
    print(f"parallel / serial speed-up: {rows['serial']['seconds'] / rows['parallel']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
