"""srm vs scalar-rm on the bundled preference set's held-out split, 3 seeds, plus the ablation of each branch.

1. Fills the branch cache for every pair of the bundled set with all five branches (the slow part: the local
   LM's fluency and quality branches; timed and reported).
2. For each seed trains, on the training split: ``scalar-rm``; ``srm`` with the default branches; ``srm`` with
   all five; ``srm`` (all five) without each branch in turn; ``srm`` (default) without the joined branch texts
   (features only) and without the feature terms (texts only, ``branch_features=false``). Each model is
   evaluated on the held-out split: pairwise accuracy overall and per dimension, reported as mean ± sample std
   over the seeds.

Run: ``.venv/bin/python bench/srm_compare.py [--seeds 0,1,2] [--threads 1] [--out runs/bench/srm_compare.json]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _sample_std(values: list[float]) -> float:
    """The sample standard deviation (ddof = 1) over the seeds, as every table of docs/reward.md gives it."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def fit_and_evaluate(configs: dict[str, tuple[str, dict]], seeds: list[int], train: list, held: list
                     ) -> dict[str, list[dict]]:
    """For each labelled (scorer, config) and seed: train on ``train``, evaluate on ``held``; the reports by label
    (each with its ``seconds``), printed as they come."""
    from lifelong.platform.registry import create

    results: dict[str, list[dict]] = {}
    for label, (scorer, cfg) in configs.items():
        for seed in seeds:
            tm = time.perf_counter()
            rm = create("scorer", scorer, seed=seed, **cfg)
            rm.fit(train)
            rep = rm.evaluate(held)
            rep["seconds"] = round(time.perf_counter() - tm, 1)
            results.setdefault(label, []).append(rep)
            print(f"{label} seed {seed}: {rep['accuracy']:.3f} ({rep['seconds']} s)", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench/srm_compare.json")
    ap.add_argument("--skip", default="", help="comma-separated branches left out everywhere (e.g. quality)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from lifelong.benchmarks.preferences import bundled_preferences
    from lifelong.platform.registry import create
    from lifelong.scorers.branches import BRANCH_NAMES, run_branches
    from lifelong.scorers.srm import SRMConfig

    seeds = [int(s) for s in args.seeds.split(",")]
    skip = [s for s in args.skip.split(",") if s]
    all_branches = [b for b in BRANCH_NAMES if b not in skip]
    default = [b for b in SRMConfig().branches if b not in skip]
    train, held = bundled_preferences("train"), bundled_preferences("heldout")

    t = time.perf_counter()
    filler = create("scorer", "srm", branches=all_branches)
    items = [(p.prompt, r) for p in train + held for r in (p.chosen, p.rejected)]
    per_branch = {}
    for b in filler.branches:
        tb = time.perf_counter()
        for s in range(0, len(items), 64):  # in chunks, so an interrupted run keeps what it computed
            run_branches([b], items[s:s + 64], filler.cache, parallel=False)
        per_branch[b.name] = round(time.perf_counter() - tb, 1)
        print(f"  {b.name}: {per_branch[b.name]} s", flush=True)
    print(f"branch cache filled for {len(items)} responses in {time.perf_counter() - t:.0f} s: {per_branch}", flush=True)

    configs: dict[str, tuple[str, dict]] = {"scalar-rm": ("scalar-rm", {})}
    configs["srm (default: " + "+".join(default) + ")"] = ("srm", {"branches": default})
    if all_branches != default:
        configs["srm (all " + str(len(all_branches)) + ")"] = ("srm", {"branches": all_branches})
    for b in all_branches:
        configs[f"srm all minus {b}"] = ("srm", {"branches": [x for x in all_branches if x != b]})
    configs["srm default, features only (no joined texts)"] = ("srm", {"branches": default, "join_texts": False})
    configs["srm default, texts only (no feature terms)"] = ("srm", {"branches": default, "branch_features": False})

    results = fit_and_evaluate(configs, seeds, train, held)

    dims = sorted(results["scalar-rm"][0]["per_dimension"])
    summary = {}
    lines = ["| scorer | overall | " + " | ".join(dims) + " |", "|---" * (2 + len(dims)) + "|"]
    for label, reps in results.items():
        row = {"overall": [r["accuracy"] for r in reps]}
        for d in dims:
            row[d] = [r["per_dimension"][d]["accuracy"] for r in reps]
        summary[label] = {k: {"mean": float(np.mean(v)), "std": _sample_std(v), "runs": v}
                          for k, v in row.items()}
        cells = [f"{np.mean(v):.3f} ± {_sample_std(v):.3f}" for v in row.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"\nheld-out pairwise accuracy ({len(held)} pairs; n per dimension: "
          + ", ".join(f"{d}={results['scalar-rm'][0]['per_dimension'][d]['n_pairs']}" for d in dims)
          + f"), mean ± sample std over seeds {seeds}\n")
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": seeds, "cache_fill_seconds": per_branch, "summary": summary,
                               "table": table}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
