"""``lifelong demo``: the main job on the embedded defaults, one section per capability of the platform.

Every section lives here, in the command-line layer, so engine and method modules carry no print-heavy tour code.
A section takes the output folder and prints what it shows; one that fails is reported and the rest still run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from lifelong.benchmarks.preferences import bundled_preferences
from lifelong.editing.session import EditSession
from lifelong.incremental.compare import compare
from lifelong.incremental.results import METRICS_LINE, format_summary_table
from lifelong.platform.registry import create

DEMO_STRATEGIES = ("naive", "ewc", "lwf", "replay", "icarl", "gdumb", "dark-er", "joint")


def demo_baselines(out: Path) -> None:
    """The baselines on split-digits over three seeds: the table and where the plots are."""
    target = out / "baselines"
    summary = compare(list(DEMO_STRATEGIES), "split-digits", [0, 1, 2], out=target, jobs=2, progress=False)
    print("split-digits, 5 experiences, 3 seeds (mean ± std, %):")
    print(format_summary_table(summary))
    print(METRICS_LINE)
    print(f"plots and tables: {target}/comparison.png, {target}/summary.csv, one folder per run with results.json")


def demo_spiking_comparison(out: Path) -> None:
    """``lifelong demo`` section: alade-snn against der on split-digits (one seed, short schedule) and their cost."""
    import torch

    target = Path(out) / "spiking"
    overrides = {"epochs": 6, "lr_milestones": [4, 5], "finetune_epochs": 20, "finetune_milestones": [10]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and never spins against a busy machine
    try:
        summary = compare(["der", "alade-snn"], "split-digits", [0], out=target, overrides=overrides,
                          progress=sys.stderr.isatty())
    finally:
        torch.set_num_threads(threads)
    print("split-digits, 5 experiences, seed 0, 6 epochs per task, memory 200 (%):")
    print(format_summary_table(summary))
    for name in ("der", "alade-snn"):
        results = json.loads((target / f"{name}-seed0" / "results.json").read_text())
        s = results.get("strategy_summary", {})
        ops = s.get("ops", {})
        rate = f", mean spike rate {s['mean_spike_rate']:.3f} over T={s['T']}" if "mean_spike_rate" in s else ""
        print(f"{name:<10} per sample: {ops.get('macs_per_sample', 0):,.0f} MACs + {ops.get('sops_per_sample', 0):,.0f} "
              f"spike-driven accumulates -> {ops.get('energy_uj_per_sample', 0):.2f} uJ (45 nm estimate){rate}")
    print(f"runs and plots: {target}")


def demo_reward(out: Path) -> None:
    """Demo section: train a cheap SRM on the bundled set, then show why a rejected answer loses."""

    branches = ["semantic", "fact-check", "style"]  # the cheap branches; the LM ones are in bench/srm_compare.py
    model = create("scorer", "srm", branches=branches, epochs=30)
    train, held = bundled_preferences("train"), bundled_preferences("heldout")
    summary = model.fit(train)
    model.save(Path(out) / "srm")
    report = model.evaluate(held)
    print(f"srm ({', '.join(branches)}) trained on {summary['n_pairs']} pairs in {summary['seconds']:.1f} s; "
          f"held-out pairwise accuracy {report['accuracy']:.3f} on {report['n_pairs']} pairs "
          + "(" + ", ".join(f"{d} {r['accuracy']:.2f}" for d, r in report["per_dimension"].items()) + ")")
    pair = next(p for p in held if p.dimension == "factual")
    chosen, rejected = model.score_many([(pair.prompt, pair.chosen), (pair.prompt, pair.rejected)])
    print(f"prompt:   {pair.prompt}")
    print(f"chosen:   {pair.chosen}   reward {chosen.reward:+.3f}")
    print(f"rejected: {pair.rejected}   reward {rejected.reward:+.3f}")
    print(f"{'dimension':<11} {'chosen':>8} {'rejected':>9} {'difference':>11}")
    for name in chosen.contributions:
        c, r = chosen.contributions[name], rejected.contributions[name]
        print(f"{name:<11} {c:+8.3f} {r:+9.3f} {c - r:+11.3f}")
    worst = min((n for n in chosen.contributions if n != "text"),
                key=lambda n: rejected.contributions[n] - chosen.contributions[n])
    print(f"the rejected answer loses most on: {worst} ({rejected.branch_texts.get(worst, '')})")


DEMO_FACTS: tuple[tuple[str, str], ...] = (
    ("The capital of Australia is", "Canberra"),
    ("The capital of Turkey is", "Ankara"),
    ("The Night Watch was painted by", "Rembrandt"),
)


def demo_editing(out: Path) -> None:
    """``lifelong demo`` section: three facts SmolLM2 gets wrong, before / after SoLA edits, one rolled back."""

    store = Path(out) / "edit-store"
    if store.exists():
        shutil.rmtree(store)
    prompts = [p for p, _ in DEMO_FACTS] + ["The capital of Canada is"]
    with EditSession(store, quiet=True) as s:
        before = s.generate(prompts, max_new_tokens=6)
        print("Before editing (greedy, SmolLM2-135M):")
        for g in before:
            print(f"  {g['prompt']!r} -> {g['completion']!r}")
        ids = []
        for p, t in DEMO_FACTS:
            rec = s.apply(p, t)
            ids.append(rec.id)
            print(f"  applied edit {rec.id}: {p!r} -> {t!r} ({rec.extra.get('steps')} LoRA steps)")
        after = s.generate(prompts, max_new_tokens=6)
        print("After three SoLA edits (the last prompt is an unedited neighbour):")
        for g in after:
            tag = f"[edit {g['edit_id']}]" if g["edit_id"] is not None else "[base model]"
            print(f"  {g['prompt']!r} -> {g['completion']!r}  {tag}")
        s.rollback([ids[1]])
        print(f"Rolled back edit {ids[1]}:")
        for g, b in zip(s.generate(prompts[:3], max_new_tokens=6), before):
            same = "identical to before editing" if g["tokens"] == b["tokens"] else "edited"
            print(f"  {g['prompt']!r} -> {g['completion']!r}  ({same})")
    print(f"store: {store} (try `lifelong edit list --store {store}`)")


DEMO_SECTIONS: list[tuple[str, Callable[[Path], None]]] = [
    ("Class-incremental baselines on split-digits", demo_baselines),
    ("Spiking class-incremental learning: ALADE-SNN vs DER", demo_spiking_comparison),
    ("Structural reward model: why a response loses", demo_reward),
    ("Lifelong editing: three wrong facts fixed with SoLA, one rolled back", demo_editing),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the tour of the platform on the embedded defaults")
    p.add_argument("--out", default="runs/demo", help="folder for results and plots (default runs/demo)")
    p.add_argument("--only", default=None, help="run only sections whose title contains this text")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for title, section in DEMO_SECTIONS:
        if args.only and args.only.lower() not in title.lower():
            continue
        print(f"\n=== {title} ===", flush=True)
        start = time.perf_counter()
        try:
            section(out)
        except Exception as exc:  # one broken section never hides the others
            failed.append(title)
            print(f"section failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"({time.perf_counter() - start:.1f} s)", flush=True)
    if failed:
        print(f"\n{len(failed)} demo section(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
