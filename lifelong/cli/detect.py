"""``lifelong detect``: train and evaluate an event-camera detector (HsVT or a baseline) on a detection benchmark.

The engine is ``lifelong/detection/``; this module parses the flags and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lifelong.platform.config import parse_overrides

#: the detectors of ``detection/models.py`` (named here so that building the parser imports no torch; a test checks
#: the two lists agree)
DETECTORS: tuple[str, ...] = ("hsvt", "conv-lstm", "spiking")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    detect = subparsers.add_parser("detect", help="train and evaluate an event-camera detector (HsVT, conv-lstm, spiking)")
    detect.add_argument("--model", default=None, help=f"detector: {', '.join(DETECTORS)} (default hsvt)")
    detect.add_argument("--benchmark", default=None, help="a benchmark that produces detection clips (default event-detection)")
    detect.add_argument("--config", default=None, help="YAML file (benchmark, seed, model_config, benchmark_config)")
    detect.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (epochs=4, n_train=64, memory=false, ...); repeatable")
    detect.add_argument("--seed", type=int, default=None, help="data, initialisation and batch order")
    detect.add_argument("--device", default=None, help="auto (CUDA when available), cpu, cuda, cuda:N")
    detect.add_argument("--out", default=None, help="output folder (default runs/detect-<model>-<benchmark>-<seed>/)")
    detect.add_argument("--json", action="store_true", help="print results.json instead of the summary")
    detect.set_defaults(handler=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from lifelong.detection.run import format_results, resolve_detect_config, run_detection  # torch: on use

    config = resolve_detect_config(benchmark=args.benchmark, model=args.model, config_file=args.config,
                                   overrides=parse_overrides(args.overrides), seed=args.seed, device=args.device)
    out = Path(args.out) if args.out else (
        Path("runs") / f"detect-{config.model_config.model}-{config.benchmark}-{config.seed}")
    results = run_detection(config, out, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    if not args.json:
        print(f"results: {out / 'results.json'}")
    return 0
