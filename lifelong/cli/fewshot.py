"""``lifelong fewshot``: meta-train a few-shot method on N-way K-shot episodes of a benchmark and report its
accuracy over the test episodes (mean and 95 % interval). The work is ``incremental/fewshot.py``'s; this module
parses and prints."""

from __future__ import annotations

import argparse

from lifelong.incremental.fewshot import resolve_fewshot_config, run_fewshot
from lifelong.incremental.results import to_json
from lifelong.platform.config import parse_overrides


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    fewshot = subparsers.add_parser("fewshot", help="meta-train and test a few-shot method on N-way K-shot episodes")
    fewshot.add_argument("--method", default=None, help="a few-shot strategy (default fsl-snn)")
    fewshot.add_argument("--benchmark", default=None, help="any class benchmark by name (default split-digits)")
    fewshot.add_argument("--config", default=None, help="YAML file (method, benchmark, n_way, k_shot, ..., "
                                                        "method_config, benchmark_config)")
    fewshot.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="n_way, k_shot, n_query, *_classes, *_episodes, a method or benchmark option; repeatable")
    fewshot.add_argument("--seed", type=int, default=None, help="class split, episodes, initialisation")
    fewshot.add_argument("--device", default=None, help="auto (CUDA when available), cpu, cuda, cuda:N")
    fewshot.add_argument("--out", default=None, help="output folder (default runs/fewshot-<method>-<benchmark>-<N>w<K>s-<seed>/)")
    fewshot.add_argument("--json", action="store_true", help="print results.json instead of the summary")
    fewshot.set_defaults(handler=cmd_fewshot)


def cmd_fewshot(args: argparse.Namespace) -> int:
    config = resolve_fewshot_config(config_file=args.config, overrides=parse_overrides(args.overrides),
                                    method=args.method, benchmark=args.benchmark, seed=args.seed, device=args.device)
    out = args.out or (f"runs/fewshot-{config.method}-{config.benchmark}-{config.n_way}w{config.k_shot}s-"
                       f"{config.seed}")
    results = run_fewshot(config, out=out, progress=not args.json)
    if args.json:
        print(to_json(results))
        return 0
    test, split = results["test"], results["classes"]
    print(f"{config.method} on {config.benchmark}, {config.n_way}-way {config.k_shot}-shot, seed {config.seed}: "
          f"{100 * test['accuracy']:.2f} ± {100 * test['ci95']:.2f} % over {test['episodes']} test episodes "
          f"(95 % interval)")
    print(f"classes: meta-training {split['train']}, validation {split['val']}, test {split['test']}")
    cost = results["cost_per_episode"]
    if cost:
        print(f"per test episode: {cost['sops']:.3g} spike-driven accumulates, {cost['macs']:.3g} MACs "
              f"(dense equivalent {cost['dense_macs']:.3g}), about {cost['energy_uj']:.3g} µJ")
    print(f"results: {out}/results.json")
    return 0
