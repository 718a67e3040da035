"""Language-model reward models on the bundled preference set: lm-rm with and without branch texts, grm, and srm
with generative side-branch (SBM) texts; pairwise accuracy on the held-out split and the cost per scored pair.

Parts (``--parts``, comma-separated, in this order):

- ``lm-rm``: ``scalar-rm backbone=lm`` (prompt + response only) for each seed;
- ``lm-rm-branches``: ``srm backbone=lm`` with ``--branches`` (their texts joined into the LM's input, their
  features as linear terms): the same backbone with branch texts, the paper's comparison;
- ``lm-rm-texts``: as ``lm-rm-branches`` with ``branch_features=false``: the branch texts in the LM's input, no
  feature terms (texts only);
- ``lm-rm-features``: as ``lm-rm-branches`` with ``join_texts=false``: the feature terms, no branch texts in the
  input (features only); with the two above, this attributes the branches' gain to the texts or the features;
- ``grm``: the generative RM baseline (no training, deterministic: one run);
- ``sbm``: trains the SBM adapters named by ``--sbms`` on ``--sbm-pairs`` training pairs (timed), then
  ``srm backbone=lm`` with those branches for each seed.

Each trained model is trained on ``--train-pairs`` pairs of the training split (every k-th, so each dimension is
represented) and evaluated on the whole held-out split and on the independent WordNet held-out set
(``lifelong/benchmarks/data/reward_heldout.jsonl``, never used to tune anything; its accuracy is reported under
``independent``). Cost per scored pair: the held-out evaluation's wall time
divided by its pairs, once cold (empty branch cache, no memoised LM states, judgements not cached) and once warm
(everything cached), on ``--threads`` torch threads. Results go to ``--out`` (JSON) after every model, so an
interrupted run keeps what it measured; the tables are printed at the end.

Run: ``nice -n 10 .venv/bin/python bench/reward_lm.py [--parts lm-rm,lm-rm-branches,grm,sbm] [--seeds 0,1,2]``
Parts may run as separate processes with their own ``--out``; ``--tables A.json,B.json`` prints the merged
tables of such files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def subset(pairs: list[Any], n: int) -> list[Any]:
    """``n`` pairs spread over the list (every k-th), so each dimension of the bundled set is represented."""
    if n >= len(pairs):
        return list(pairs)
    idx = np.linspace(0, len(pairs) - 1, n).round().astype(int)
    return [pairs[i] for i in idx]


def timed_eval(model: Any, pairs: list[Any]) -> tuple[dict[str, Any], float]:
    t = time.perf_counter()
    report = model.evaluate(pairs)
    return report, time.perf_counter() - t


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _runs(v: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured runs of one result entry: itself (grm) or its per-seed rows."""
    return [v] if "accuracy" in v else [r for r in v.values() if isinstance(r, dict) and "accuracy" in r]


def _accuracy_table(results: dict[str, Any], view: str | None) -> None:
    """One markdown table, mean ± std over seeds per model: ``view`` None reads the bundled held-out split's
    accuracy and costs, ``"independent"`` the WordNet held-out set's accuracy (rows without it are left out)."""
    models = {k: v for k, v in results.items() if isinstance(v, dict) and k not in ("setup", "sbm_training")}
    pick = (lambda r: r) if view is None else (lambda r: r.get(view))
    dims = sorted({d for v in models.values() for r in _runs(v) if pick(r) for d in pick(r)["per_dimension"]})
    print("| scorer | overall | " + " | ".join(dims) + (" | s/pair cold | s/pair warm |" if view is None else " |"))
    print("|---" * (len(dims) + (4 if view is None else 2)) + "|")
    for name, v in models.items():
        runs = [pick(r) for r in _runs(v) if pick(r)]
        if not runs:
            continue
        cells = [fmt([r["accuracy"] for r in runs])]
        cells += [fmt([r["per_dimension"][d]["accuracy"] for r in runs if d in r["per_dimension"]]) for d in dims]
        if view is None:
            cells.append(str(next((r["eval_seconds_per_pair_cold"] for r in runs if "eval_seconds_per_pair_cold" in r), None)))
            cells.append(str(next((r["eval_seconds_per_pair_warm"] for r in runs if "eval_seconds_per_pair_warm" in r), None)))
        print(f"| {name} ({len(runs)} run{'s' if len(runs) > 1 else ''}) | " + " | ".join(cells) + " |")


def print_tables(results: dict[str, Any], seeds: str) -> None:
    """The accuracy tables (bundled held-out split, independent WordNet set) and the SBM training report."""
    setup = results.get("setup", {})
    print(f"\nheld-out pairwise accuracy ({setup.get('heldout_pairs')} pairs; trained on {setup.get('train_pairs')} "
          f"pairs, seeds {seeds}):")
    _accuracy_table(results, None)
    print(f"\nindependent WordNet held-out set ({setup.get('independent_pairs')} pairs; same models):")
    _accuracy_table(results, "independent")
    for name, v in results.items():
        if isinstance(v, dict) and name not in ("setup", "sbm_training") and "accuracy" not in v:
            times = [r["train_seconds"] for r in v.values() if isinstance(r, dict) and "train_seconds" in r]
            if times:
                print(f"  {name}: training {', '.join(f'{t:.0f}' for t in times)} s per seed")
    if results.get("sbm_training"):
        for b, rep in results["sbm_training"].items():
            print(f"\n{b}: " + json.dumps({k: v for k, v in rep.items() if k != "examples"}))
            for ex in rep.get("examples", [])[:2]:
                print("  example: " + json.dumps(ex))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="lm-rm,lm-rm-branches,grm,sbm")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-pairs", type=int, default=96)
    ap.add_argument("--lm-epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--branches", default="semantic,fact-check,style,fluency")
    ap.add_argument("--sbms", default="sbm-fact-check,sbm-entity")
    ap.add_argument("--sbm-pairs", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench/reward_lm.json")
    ap.add_argument("--tables", default=None, metavar="A.json,B.json",
                    help="only print the tables of result files written by earlier runs (merged), then exit")
    args = ap.parse_args()
    if args.tables:
        merged: dict[str, Any] = {}
        for f in args.tables.split(","):
            data = json.loads(Path(f).read_text())
            merged.setdefault("setup", data.get("setup", {}))
            merged.update({k: v for k, v in data.items() if k != "setup"})
        print_tables(merged, args.seeds)
        return
    import torch

    torch.set_num_threads(args.threads)
    from lifelong.benchmarks.preferences import bundled_preferences
    from lifelong.platform.registry import create
    from lifelong.scorers.lm_backbone import clear_split_memo

    seeds = [int(s) for s in args.seeds.split(",")]
    parts = [p for p in args.parts.split(",") if p]
    train = subset(bundled_preferences("train"), args.train_pairs)
    held = bundled_preferences("heldout")
    from lifelong.benchmarks.reward_heldout import heldout_preferences

    independent = heldout_preferences()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    results["setup"] = {"train_pairs": len(train), "heldout_pairs": len(held),
                        "independent_pairs": len(independent), "lm_epochs": args.lm_epochs,
                        "batch_size": args.batch_size, "threads": args.threads, "branches": args.branches}

    def save() -> None:
        out.write_text(json.dumps(results, indent=1))

    def lm_runs(name: str, scorer: str, extra: dict[str, Any]) -> None:
        rows = results.setdefault(name, {})
        cache = Path(tempfile.mkdtemp(prefix="reward-lm-"))
        try:
            for seed in seeds:
                if str(seed) in rows:
                    continue
                cold = not rows  # the first seed pays every cache miss
                if cold:
                    clear_split_memo()
                model = create("scorer", scorer, backbone="lm", seed=seed, lm_epochs=args.lm_epochs,
                               batch_size=args.batch_size, cache_dir=str(cache), device="cpu", **extra)
                t = time.perf_counter()
                summary = model.fit(train)
                train_s = time.perf_counter() - t
                report, eval_s = timed_eval(model, held)
                row = {"accuracy": report["accuracy"], "per_dimension": report["per_dimension"],
                       "train_seconds": round(train_s, 1), "train_feature_seconds": summary.get("feature_seconds"),
                       "final_loss": summary["final_loss"], "train_accuracy": summary["train_accuracy"],
                       "eval_seconds": round(eval_s, 1)}
                if cold:
                    row["eval_seconds_per_pair_cold"] = round(eval_s / len(held), 3)
                    _, warm = timed_eval(model, held)
                    row["eval_seconds_per_pair_warm"] = round(warm / len(held), 4)
                ind, _ = timed_eval(model, independent)
                row["independent"] = {"accuracy": ind["accuracy"], "per_dimension": ind["per_dimension"]}
                rows[str(seed)] = row
                save()
                print(f"{name} seed {seed}: accuracy {report['accuracy']:.3f}, train {train_s:.0f} s, "
                      f"eval {eval_s:.0f} s", flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    branches = [b for b in args.branches.split(",") if b]
    for part in parts:
        if part == "lm-rm":
            lm_runs("lm-rm (prompt + response)", "scalar-rm", {})
        elif part == "lm-rm-branches":
            lm_runs("lm-rm + branch texts (" + "+".join(branches) + ")", "srm", {"branches": branches})
        elif part == "lm-rm-texts":
            lm_runs("lm-rm + branch texts only, no feature terms", "srm", {"branches": branches,
                                                                          "branch_features": False})
        elif part == "lm-rm-features":
            lm_runs("lm-rm + feature terms only, no branch texts", "srm", {"branches": branches, "join_texts": False})
        elif part == "grm" and "grm" not in results:
            cache = Path(tempfile.mkdtemp(prefix="reward-grm-"))
            try:
                judge = create("scorer", "grm", cache_dir=str(cache), device="cpu")
                report, cold = timed_eval(judge, held)
                _, warm = timed_eval(judge, held)
                ind, _ = timed_eval(judge, independent)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            results["grm"] = {"accuracy": report["accuracy"], "per_dimension": report["per_dimension"],
                              "order_agreement": report["order_agreement"],
                              "first_order_accuracy": report["first_order_accuracy"],
                              "eval_seconds_per_pair_cold": round(cold / len(held), 3),
                              "eval_seconds_per_pair_warm": round(warm / len(held), 4),
                              "independent": {"accuracy": ind["accuracy"], "per_dimension": ind["per_dimension"]}}
            save()
            print(f"grm: accuracy {report['accuracy']:.3f} (cold {cold:.0f} s)", flush=True)
        elif part == "sbm":
            sbms = [b for b in args.sbms.split(",") if b]
            sbm_root = out.parent / "reward_lm_sbm"
            timing = results.setdefault("sbm_training", {})
            from lifelong.scorers.branches.sbm_train import train_sbm

            for b in sbms:
                if b in timing:
                    continue
                report = train_sbm(b, subset(bundled_preferences("train"), args.sbm_pairs), sbm_root / b, seed=0)
                timing[b] = report
                save()
                print(f"{b}: trained in {report['seconds']:.0f} s", flush=True)
            opts = {f"{b}": {"adapter": str(sbm_root / b)} for b in sbms}
            lm_runs("srm backbone=lm + SBM texts (" + "+".join(sbms) + ")", "srm",
                    {"branches": sbms, "branch_config": opts})
    save()

    print_tables(results, args.seeds)


if __name__ == "__main__":
    main()
