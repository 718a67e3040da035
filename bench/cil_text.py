"""The evidence on split-wordnet-glosses (60 WordNet categories, 10 experiences of 6): the pre-trained-model
strategies on a real pre-trained transformer (all-MiniLM-L6-v2 by default, ``--model smollm2-135m``), their
baselines and ablations; mean ± std over seeds and the 95 % t-interval of the mean AIA, trainable parameters
and training time per task.

Rows (``--only`` picks some; ``name`` is a row, not always a strategy):

- ``zero-shot`` (``continual-clip`` on the text model: "a kind of {class}." against the gloss), ``simplecil``;
- ``sime`` (adapters in every block beside the MLP, first task only) and its ablations: ``sime-1blk`` (last
  block only), ``sime-3blk`` (last three), ``sime-mlp+attn`` (every block, MLP and attention: more adapters
  within a block), ``sime-text0.3`` / ``sime-text0.6`` (fusion with the class-name score, weight 0.3 / 0.6);
- ``prop`` (regulariser ``bound``), ``prop-noreg``, ``l2p``;
- full fine-tuning of the whole model: ``naive``, ``replay`` (120 texts), ``ewc``, ``joint``.

Each (row, seed) run is ``run_experiment`` with the bench's protocol (``--train-per-class``,
``--test-per-class``, ``--max-tokens``, the same for every row), one torch thread a run, ``--jobs`` in
parallel; runs already in ``--out`` are reused. Needs Debian's wordnet-base (``make data``).

    .venv/bin/python bench/cil_text.py --seeds 0,1,2 --train-per-class 5 --test-per-class 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cil_fashion import fmt, run_all, t_interval  # noqa: E402  (the same statistics as the image table)

FINE_TUNE = {"optimizer": "adam", "lr": 1e-4, "epochs": 2, "batch_size": 16}
ROWS: dict[str, tuple[str, dict[str, Any]]] = {  # in the order the runs start: the main comparisons first
    "simplecil": ("simplecil", {}),
    "sime": ("sime", {}),
    "zero-shot": ("continual-clip", {}),
    "prop": ("prop", {}),
    "l2p": ("l2p", {}),
    "prop-noreg": ("prop", {"reg": "none"}),
    "sime-1blk": ("sime", {"adapter_blocks": [-1]}),
    "sime-mlp+attn": ("sime", {"adapter_sites": ["mlp", "attn"]}),
    "sime-text0.3": ("sime", {"text_weight": 0.3}),
    "naive": ("naive", FINE_TUNE),
    "replay": ("replay", {**FINE_TUNE, "mem_size": 120}),
    "ewc": ("ewc", FINE_TUNE),
    "joint": ("joint", FINE_TUNE),
    "sime-3blk": ("sime", {"adapter_blocks": [-3, -2, -1]}),
    "sime-text0.6": ("sime", {"text_weight": 0.6}),
}


def one(args: tuple[str, int, str, dict[str, Any], bool]) -> dict[str, Any]:
    row, seed, out, protocol, fresh = args
    import torch

    torch.set_num_threads(1)
    from lifelong.incremental.run import resolve_config, run_experiment

    folder = Path(out) / f"{row}-seed{seed}"
    done = folder / "results.json"
    if done.exists() and not fresh:
        return {**json.loads(done.read_text()), "row": row}
    strategy, overrides = ROWS[row]
    try:
        config = resolve_config(strategy=strategy, benchmark="split-wordnet-glosses", seed=seed, device="cpu",
                                overrides={**protocol, **overrides})
        return {**run_experiment(config, out=folder, progress=False), "row": row}
    except Exception as exc:  # one failing run is reported, the others still count
        return {"row": row, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}


#: the papers' claims as paired comparisons (row a minus row b, on the seeds both have)
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("sime", "simplecil", "SimE: do the first-task adapters add to the frozen encoder's prototypes?"),
    ("sime", "sime-1blk", "SimE: adapters in every block vs the last block only (between blocks)"),
    ("sime-mlp+attn", "sime", "SimE: a second adapter within each block (attention as well as MLP)"),
    ("sime-text0.3", "sime", "SimE: fusing the class-name score (w = 0.3)"),
    ("sime", "zero-shot", "prototypes vs class-name zero-shot"),
    ("prop", "l2p", "ProP vs L2P: task prompts without key-value matching"),
    ("prop", "prop-noreg", "ProP: the prompt-value regulariser on vs off"),
    ("prop", "simplecil", "ProP's prompts vs the frozen encoder's own prototypes"),
)


def print_pairs(groups: dict[str, list[dict[str, Any]]]) -> None:
    """Each claim's paired AIA difference over shared seeds: mean and 95 % t-interval, in points."""
    print("\npaired differences in AIA (a - b, same seeds), mean [95 % t-interval] in points")
    for a, b, what in PAIRS:
        by_seed = {g["seed"]: g["average_incremental_accuracy"] for g in groups.get(b, [])}
        diffs = [g["average_incremental_accuracy"] - by_seed[g["seed"]] for g in groups.get(a, []) if g["seed"] in by_seed]
        if not diffs:
            continue
        mean, low, high = t_interval(diffs)
        print(f"{a:>14} - {b:<11}{mean:+6.2f} [{low:+6.2f}, {high:+6.2f}] n={len(diffs)}  {what}")


def trainable(result: dict[str, Any]) -> str:
    s = result.get("strategy_summary", {})
    for key in ("trainable_parameters", "trainable_parameters_per_task"):
        if key in s:
            return f"{s[key]:,}" + (" /task" if key.endswith("task") else "")
    return "all"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", default=None, help=f"comma-separated rows of: {', '.join(ROWS)}")
    p.add_argument("--model", default="minilm")
    p.add_argument("--train-per-class", type=int, default=5)
    p.add_argument("--test-per-class", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--out", default="runs/bench-cil-text")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--report-only", action="store_true", help="print the table of the finished runs, run nothing")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = [r.strip() for r in args.only.split(",")] if args.only else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"cil_text: unknown row {unknown[0]!r}; allowed: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    protocol = {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                "max_tokens": args.max_tokens, "model": args.model}
    out = f"{args.out}-{args.model}"
    t0 = time.time()
    tasks = [(r, s, out, protocol, args.fresh) for r in rows for s in seeds]
    if args.report_only:
        tasks = [t for t in tasks if (Path(out) / f"{t[0]}-seed{t[1]}" / "results.json").exists()]
    runs = run_all(one, tasks, args.jobs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault(r["row"], []).append(r)
    print(f"split-wordnet-glosses, 60 classes in 10 experiences, {args.train_per_class} training / "
          f"{args.test_per_class} test texts a class, max {args.max_tokens} tokens, model {args.model}, seeds "
          f"{seeds}; mean ± std over seeds in %; " + ("finished runs only" if args.report_only else
          f"one thread a run, {args.jobs} in parallel; bench wall time {time.time() - t0:.0f} s"))
    header = (f"{'row':<14}{'AIA':>16}{'AIA 95% CI':>18}{'last':>16}{'forgetting':>16}{'trainable':>16}"
              f"{'s/task':>8}{'run s':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        group = groups.get(row, [])
        if not group:
            continue
        mean, low, high = t_interval([g["average_incremental_accuracy"] for g in group])
        per_task = [sum(s) / len(s) for g in group if (s := g.get("strategy_summary", {}).get("train_seconds_per_task"))]
        task_s = f"{sum(per_task) / len(per_task):.1f}" if per_task else "-"
        wall = sum(g["wall_time_s"] for g in group) / len(group)
        n = f" (n={len(group)}: seeds {[g['seed'] for g in group]})" if len(group) != len(seeds) else ""
        print(f"{row:<14}{fmt([g['average_incremental_accuracy'] for g in group]):>16}"
              f"{f'[{low:.1f}, {high:.1f}]':>18}{fmt([g['last_accuracy'] for g in group]):>16}"
              f"{fmt([g['forgetting'] for g in group]):>16}{trainable(group[0]):>16}{task_s:>8}{wall:>8.0f}{n}")
    print_pairs(groups)
    failures = [r for r in runs if "error" in r]
    for f in failures:
        print(f"FAILED: {f['row']} seed {f['seed']}: {f['error']}")
    print(f"command: {' '.join([Path(sys.executable).name, 'bench/cil_text.py', *(argv if argv is not None else sys.argv[1:])])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
