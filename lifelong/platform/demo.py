"""``lifelong demo``: the main job on the embedded defaults, one section per capability of the platform.

Each section is ``"module:function"``; the function takes the output folder and prints what it shows.
Sections load lazily, so a section whose module is missing or broken is reported and the rest still run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

DEMO_SECTIONS: list[tuple[str, str]] = [
    ("Class-incremental baselines on split-digits", "lifelong.platform.runner:demo_baselines"),
    ("Spiking class-incremental learning: ALADE-SNN vs DER", "lifelong.strategies.alade_snn:demo_spiking_comparison"),
    ("Structural reward model: why a response loses", "lifelong.platform.cli_reward:demo_reward"),
    ("Lifelong editing: three wrong facts fixed with SoLA, one rolled back", "lifelong.platform.editing:demo_editing"),
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
    for title, target in DEMO_SECTIONS:
        if args.only and args.only.lower() not in title.lower():
            continue
        print(f"\n=== {title} ===", flush=True)
        start = time.perf_counter()
        module_name, _, func_name = target.partition(":")
        try:
            getattr(importlib.import_module(module_name), func_name)(out)
        except Exception as exc:  # one broken section never hides the others
            failed.append(title)
            print(f"section failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"({time.perf_counter() - start:.1f} s)", flush=True)
    if failed:
        print(f"\n{len(failed)} demo section(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
