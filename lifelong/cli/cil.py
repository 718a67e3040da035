"""``lifelong plugins list``, ``lifelong run`` and ``lifelong compare``: the class-incremental commands."""

from __future__ import annotations

import argparse
import difflib
import json
import sys

from lifelong.incremental.compare import RunFailed, compare, comparison_configs
from lifelong.incremental.distributed import current_distributed_info
from lifelong.incremental.results import METRICS_LINE, format_run_table, format_summary_table, to_json
from lifelong.incremental.run import default_out_dir, resolve_config, run_experiment
from lifelong.platform.config import parse_overrides
from lifelong.platform.errors import UserError, one_line
from lifelong.platform.registry import KINDS, list_plugins, load_errors


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    plugins = subparsers.add_parser("plugins", help="list the registered plugins")
    plugins_sub = plugins.add_subparsers(dest="plugins_command", metavar="ACTION")
    plugins_sub.required = True
    listing = plugins_sub.add_parser("list", help="list plugins (name, kind, summary, source)")
    listing.add_argument("--kind", choices=KINDS)
    listing.add_argument("--pattern", default="*", help="glob on the plugin name, e.g. 'alade*'")
    listing.add_argument("--json", action="store_true", help="print JSON only")
    listing.set_defaults(handler=cmd_plugins_list)
    show = plugins_sub.add_parser("show", help="one plugin: summary, config fields (type, default, help), "
                                               "capabilities, source package")
    show.add_argument("name", help="the plugin's name (see `lifelong plugins list`)")
    show.add_argument("--kind", choices=KINDS, help="its kind, where two kinds have a plugin of that name")
    show.add_argument("--json", action="store_true", help="print JSON only")
    show.set_defaults(handler=cmd_plugins_show)

    run = subparsers.add_parser("run", help="run one strategy on a class-incremental benchmark")
    run.add_argument("--strategy", help="registered strategy name (see `lifelong plugins list`)")
    run.add_argument("--benchmark", help="registered benchmark name (default split-digits)")
    _common_run_options(run)
    run.add_argument("--seed", type=int, default=None, help="run seed: data split, class order, initialisation")
    run.add_argument("--out", default=None, help="output folder (default runs/<strategy>-<benchmark>-<seed>/)")
    run.add_argument("--resume", action="store_true", help="continue from the last completed experience in --out")
    run.add_argument("--stop-after", type=int, default=None, metavar="N",
                     help="stop after N more experiences, leaving a checkpoint (continue later with --resume)")
    run.add_argument("--threads", type=int, default=1,
                     help="torch threads (default 1, as every run of `compare`, so the same seed and config give "
                          "the same numbers in both; more threads are faster on a CPU and may change the last digits)")
    run.add_argument("--json", action="store_true", help="print results.json instead of the table")
    run.set_defaults(handler=cmd_run)

    compare = subparsers.add_parser("compare", help="run several strategies over several seeds and summarise")
    compare.add_argument("--strategies", default=None,
                         help="comma-separated strategy names (default: every strategy --config has a file for)")
    compare.add_argument("--benchmark", default=None,
                         help="registered benchmark name (default: the config's, else split-digits)")
    _common_run_options(compare, config_help="YAML experiment file, a folder of them (one per strategy), or a "
                                             "NAME: configs/<strategy>/NAME.yaml for each strategy")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    compare.add_argument("--out", default=None, help="output folder (default runs/compare-<benchmark>/)")
    compare.add_argument("--jobs", type=int, default=1, help="run (strategy, seed) pairs in N parallel processes")
    compare.add_argument("--threads", type=int, default=1,
                         help="torch threads per run, serial or parallel alike, so --jobs gives the serial summary "
                              "bit for bit (default 1)")
    compare.add_argument("--resume", action="store_true",
                         help="continue every (strategy, seed) pair from the checkpoint in its folder, where there is one")
    compare.add_argument("--backend", choices=("local", "ray"), default="local",
                         help="local: this machine's processes (--jobs); ray: each (strategy, seed) run as a Ray "
                              "task, on a local Ray instance or the cluster at --address")
    compare.add_argument("--address", default=None, metavar="ADDR",
                         help="with --backend ray: the cluster's head, HOST:PORT (from `ray start --head`) or auto")
    compare.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    compare.set_defaults(handler=cmd_compare)


def _common_run_options(parser: argparse.ArgumentParser, config_help: str = "YAML experiment file (strategy, "
                        "benchmark, seed, strategy_config, benchmark_config)") -> None:
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (nested with dots); repeatable")
    parser.add_argument("--device", default=None, help="auto (CUDA when available), cpu, cuda, cuda:N")


def cmd_plugins_list(args: argparse.Namespace) -> int:

    specs = list_plugins(args.kind, args.pattern)
    errors = load_errors()
    if args.json:
        print(json.dumps({"plugins": [s.as_dict() for s in specs],
                          "errors": [e.__dict__ for e in errors]}, indent=2))
        return 0
    for spec in specs:
        print(f"{spec.kind:<10} {spec.name:<18} {spec.source:<16} {spec.summary}")
    for error in errors:
        print(f"plugin {error.name} ({error.source}) failed to load: {error.error}", file=sys.stderr)
    return 0


def cmd_plugins_show(args: argparse.Namespace) -> int:
    from lifelong.cli.describe import describe, format_description

    specs = [s for s in list_plugins(args.kind) if s.name == args.name]
    if not specs:
        close = difflib.get_close_matches(args.name, [s.name for s in list_plugins(args.kind)], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `lifelong plugins list`"
        raise UserError(f"no {args.kind or 'plugin'} named {args.name!r}{hint}")
    described = [describe(s) for s in specs]
    if args.json:
        print(json.dumps(described[0] if len(described) == 1 else described, indent=2, default=str))
    else:
        print("\n\n".join(format_description(d) for d in described))
    return 0


def _parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def cmd_run(args: argparse.Namespace) -> int:

    config = resolve_config(strategy=args.strategy, benchmark=args.benchmark, config_file=args.config,
                            overrides=parse_overrides(args.overrides), seed=args.seed, device=args.device)
    out = args.out or default_out_dir(config)
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after must be at least 1, got {args.stop_after}")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run_experiment(config, out=out, resume=args.resume, progress=not args.json,
                                 stop_after=args.stop_after)
    finally:
        torch.set_num_threads(previous)

    if not current_distributed_info().is_main:
        return 0
    if "strategy" not in results:  # stopped early: a checkpoint, no results yet
        print(to_json(results, indent=None) if args.json else
              f"stopped after {results['completed']} experiences; checkpoint in {out} (continue with --resume)")
        return 0
    if args.json:
        print(to_json(results))
    else:
        print(format_run_table(results))
        print(METRICS_LINE)
        print(f"results: {out}/results.json  plots: {out}/accuracy_matrix.png, {out}/accuracy_curve.png")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:

    strategies = [s.strip() for s in (args.strategies or "").split(",") if s.strip()] or None
    if args.strategies is not None and not strategies:
        raise UserError("--strategies: give at least one strategy name")
    seeds = _parse_ints(args.seeds, "--seeds")
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    configs = comparison_configs(strategies, args.benchmark, seeds, config_file=args.config,
                                 overrides=parse_overrides(args.overrides), device=args.device)
    benchmark = configs[0].benchmark
    out = args.out or f"runs/compare-{benchmark}"
    try:
        summary = compare(strategies, args.benchmark, seeds, out=out, overrides=parse_overrides(args.overrides),
                          config_file=args.config, jobs=args.jobs, threads=args.threads,
                          device=args.device, progress=not args.json, resume=args.resume,
                          backend=args.backend, address=args.address)
    except RunFailed as exc:  # one line naming the run; exit 2 when its cause was bad input, 1 otherwise
        print(f"lifelong: error: {one_line(str(exc))}", file=sys.stderr)
        return 2 if exc.user_error else 1
    if args.json:
        print(to_json(summary))
    else:
        print(f"{benchmark}, seeds {','.join(map(str, seeds))} (mean ± std, %):")
        print(format_summary_table(summary))
        print(METRICS_LINE)
        print(f"summary: {out}/summary.json, {out}/summary.csv  plot: {out}/comparison.png")
    return 0
