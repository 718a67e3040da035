"""Sequential editing, side by side in one run: sola vs grace vs ft-l on the bundled set (SmolLM2-135M, CPU).

    python bench/edit_bench.py [--n 50] [--seed 0] [--editors sola,grace,ft-l] [--out bench/out/edit]

The model is loaded once; each editor gets a fresh store and the same shuffled edits; the rows are what
``lifelong edit bench`` computes (reliability, generalization, locality right after each edit and after the
stream, rollback fidelity and retention after rolling back a random half, seconds per edit). Prints a table
and writes ``summary.json`` plus one folder per editor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--editors", default="sola,grace,ft-l")
    ap.add_argument("--out", default="bench/out/edit")
    args = ap.parse_args()
    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.benchmarks.edits import bundled_edits_path, load_edits
    from lifelong.editing.bench import run_edit_bench

    loaded = load_causal_lm()
    reqs = load_edits(bundled_edits_path())
    rows = {}
    base_cache: dict = {}  # the unedited model's references, computed once for all editors
    for name in args.editors.split(","):
        t = time.perf_counter()
        res = run_edit_bench(name, reqs, n=args.n, seed=args.seed, out=Path(args.out) / name, loaded=loaded,
                             source=str(bundled_edits_path()), base_cache=base_cache)
        rows[name] = {k: res[k] for k in ("right_after", "after_stream", "rollback", "seconds_per_edit", "n_edits",
                                          "editor_config", "pre_edit_reliability")}
        rows[name]["rollback"] = {k: v for k, v in res["rollback"].items() if k != "rolled_back_ids"}
        print(f"{name} done in {time.perf_counter() - t:.0f} s", flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1))
    f = lambda x: "  n/a" if x is None else f"{x:5.3f}"
    print(f"\n{args.n} sequential edits, seed {args.seed}, SmolLM2-135M on CPU")
    print(f"{'editor':8s} | {'rel(now)':>8s} {'gen(now)':>8s} {'loc(now)':>8s} | {'rel(end)':>8s} {'gen(end)':>8s} "
          f"{'loc(end)':>8s} | {'fidelity':>8s} {'retain':>6s} | {'s/edit med':>10s} {'mean':>5s}")
    for name, r in rows.items():
        a, e, b, s = r["right_after"], r["after_stream"], r["rollback"], r["seconds_per_edit"]
        print(f"{name:8s} | {f(a['reliability']):>8s} {f(a['generalization']):>8s} {f(a['locality']):>8s} | "
              f"{f(e['reliability']):>8s} {f(e['generalization']):>8s} {f(e['locality']):>8s} | "
              f"{f(b['fidelity']):>8s} {f(b['retention']):>6s} | {s['median']:10.2f} {s['mean']:5.2f}")


if __name__ == "__main__":
    main()
