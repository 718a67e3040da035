"""The WordNet held-out preference set: build it (``build``) and measure scorers on it (``measure``).

``build`` writes ``lifelong/benchmarks/data/reward_heldout.jsonl`` by the procedure of
``lifelong.benchmarks.reward_heldout`` (docs/reward.md, "The WordNet held-out set") from Debian's WordNet 3.0;
``build --check`` rebuilds it in memory and fails if the shipped file differs (the file is reproducible).

``measure`` trains each scorer on the bundled preference set's training split (326 pairs) and evaluates it on
the held-out set, for each seed; it prints pairwise accuracy overall and per family as mean ± std over the
seeds. Scorers: ``scalar-rm``; ``srm`` with the default branches (none of them reads WordNet); and, labelled as
not held out, ``srm`` with the default branches plus ``entity-background`` (which reads WordNet, the source of
the factual pairs).

Run: ``nice -n 10 .venv/bin/python bench/reward_heldout.py build [--check]``
     ``nice -n 10 .venv/bin/python bench/reward_heldout.py measure [--seeds 0,1,2] [--threads 1]
     [--out runs/bench/reward_heldout.json]``
     ``nice -n 10 .venv/bin/python bench/reward_heldout.py claims`` (how often the entity-background claim check
     fires on the held-out set and on the training split)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from srm_compare import fit_and_evaluate  # noqa: E402  (the reward benches share the train-and-evaluate loop)


def _sample_std(values: list[float]) -> float:
    """The sample standard deviation (ddof = 1) over the seeds, as every table of docs/reward.md gives it."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def build(check: bool) -> int:
    from lifelong.benchmarks.reward_heldout import HELDOUT_FILE, build_heldout, write_heldout
    from lifelong.benchmarks.wordnet import open_wordnet

    t = time.perf_counter()
    records = build_heldout(open_wordnet())
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    if check:
        same = HELDOUT_FILE.is_file() and HELDOUT_FILE.read_text(encoding="utf-8") == text
        print(f"{HELDOUT_FILE}: {'identical to' if same else 'DIFFERS from'} a fresh build ({len(records)} records)")
        return 0 if same else 1
    write_heldout(records)
    print(f"wrote {len(records)} records to {HELDOUT_FILE} ({len(text.encode())} bytes) in {time.perf_counter() - t:.0f} s")
    return 0


def measure(seeds: list[int], threads: int, out: Path) -> int:
    import torch

    torch.set_num_threads(threads)
    from lifelong.benchmarks.preferences import bundled_preferences
    from lifelong.benchmarks.reward_heldout import heldout_preferences
    from lifelong.scorers.srm import DEFAULT_BRANCHES

    train, held = bundled_preferences("train"), heldout_preferences()
    default = list(DEFAULT_BRANCHES)
    configs: dict[str, tuple[str, dict]] = {
        "scalar-rm": ("scalar-rm", {}),
        "srm (default: " + "+".join(default) + ")": ("srm", {"branches": default}),
        "srm default + entity-background (reads WordNet: not held out)": (
            "srm", {"branches": default + ["entity-background"]}),
    }
    results = fit_and_evaluate(configs, seeds, train, held)

    dims = sorted(results["scalar-rm"][0]["per_dimension"])
    families = {"factual": [d for d in dims if d.startswith("factual")], "instruction": [d for d in dims if d.startswith("if-")]}
    summary = {}
    cols = ["overall", *families, *dims]
    lines = ["| scorer | " + " | ".join(cols) + " |", "|---" * (1 + len(cols)) + "|"]
    for label, reps in results.items():
        row = {"overall": [r["accuracy"] for r in reps]}
        for fam, members in families.items():
            row[fam] = [sum(r["per_dimension"][d]["accuracy"] * r["per_dimension"][d]["n_pairs"] for d in members)
                        / sum(r["per_dimension"][d]["n_pairs"] for d in members) for r in reps]
        for d in dims:
            row[d] = [r["per_dimension"][d]["accuracy"] for r in reps]
        summary[label] = {k: {"mean": float(np.mean(v)), "std": _sample_std(v), "runs": v}
                          for k, v in row.items()}
        lines.append(f"| {label} | " + " | ".join(f"{np.mean(row[c]):.3f} ± {_sample_std(row[c]):.3f}" for c in cols) + " |")
    table = "\n".join(lines)
    n = results["scalar-rm"][0]["per_dimension"]
    print(f"\nWordNet held-out set ({len(held)} pairs: " + ", ".join(f"{d} {n[d]['n_pairs']}" for d in dims)
          + f"), trained on the bundled training split ({len(train)} pairs), mean ± sample std over seeds {seeds}\n")
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": seeds, "summary": summary, "table": table}, indent=2))
    print(f"\nwritten {out}")
    return 0


def claims() -> int:
    """How often the entity-background branch's WordNet claim check fires, on the held-out set and on the
    bundled training split (its outputs come from the branch cache when ``measure`` filled it)."""
    from lifelong.benchmarks.preferences import bundled_preferences
    from lifelong.benchmarks.reward_heldout import heldout_preferences
    from lifelong.scorers.branches import BranchCache, default_cache_path, make_branches, run_branches

    cache = BranchCache(default_cache_path())
    (branch,) = make_branches(["entity-background"])
    for name, pairs in (("held-out set", heldout_preferences()), ("bundled training split", bundled_preferences("train"))):
        items = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
        outs = run_branches([branch], items, cache)["entity-background"]
        fired = sum(1 for o in outs if o.features[2] + o.features[3] > 0)
        print(f"{name}: {fired} of {len(items)} responses have a claim checked against WordNet")
        factual = [(p, c, r) for p, c, r in zip(pairs, outs[0::2], outs[1::2]) if (p.dimension or "").startswith("factual")]
        if factual and name == "held-out set":
            print(f"  factual pairs: chosen supported in {sum(c.features[2] > 0 for _, c, _ in factual)}, rejected "
                  f"contradicted in {sum(r.features[3] > 0 for _, _, r in factual)}, of {len(factual)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--check", action="store_true", help="compare a fresh build with the shipped file")
    m = sub.add_parser("measure")
    m.add_argument("--seeds", default="0,1,2")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--out", default="runs/bench/reward_heldout.json")
    sub.add_parser("claims", help="how often the entity-background claim check fires")
    args = ap.parse_args()
    if args.command == "build":
        return build(args.check)
    if args.command == "claims":
        return claims()
    return measure([int(s) for s in args.seeds.split(",")], args.threads, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
