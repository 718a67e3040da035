"""``lifelong reward train | score | eval``: reward scorers (``srm``, ``scalar-rm``) from the command line (docs/reward.md).

Without ``--data``, ``train`` uses the bundled preference set's training split and ``eval`` its held-out split;
``--format`` reads RM-Bench and JudgeBench files too (``lifelong.benchmarks.reward_formats``), and ``eval`` then
reports accuracy per domain and, for RM-Bench, per easy/normal/hard level.
Every input is checked before any work starts; a trained model is written atomically at the end, so a failed
run leaves no half-written model folder.

Scorers are reached only through the registry, never imported by name; what the commands call on them (``fit``,
``save``, ``load``, ``score``, ``evaluate``, ``trains_nothing``) is the scorer contract, ``lifelong.scorers.base``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lifelong.benchmarks.preferences import bundled_preferences
from lifelong.benchmarks.reward_formats import FORMATS, grouped_report, load_pairs
from lifelong.cli.options import text_argument
from lifelong.platform.config import deep_merge, load_yaml, parse_overrides
from lifelong.platform.errors import UserError
from lifelong.platform.registry import RegistryError, create, get
from lifelong.scorers.base import load_scorer, read_meta


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    reward = subparsers.add_parser("reward", help="train, apply and evaluate reward scorers (srm, scalar-rm, grm) "
                                   "and generative side branches (sbm-train)")
    sub = reward.add_subparsers(dest="reward_command", metavar="ACTION")
    sub.required = True

    train = sub.add_parser("train", help="train a scorer on preference pairs (Bradley-Terry)")
    train.add_argument("--scorer", required=True, help="registered scorer name: srm, scalar-rm or grm")
    train.add_argument("--data", default=None, help="preference JSONL (default: the bundled training split)")
    train.add_argument("--format", default="auto", choices=FORMATS,
                       help="format of --data: plain/HH-RLHF/UltraFeedback preferences, RM-Bench or JudgeBench "
                            "(auto: told by the first record)")
    train.add_argument("--out", required=True, help="folder for the trained model (config.json, head.safetensors)")
    train.add_argument("--config", default=None, help="YAML file of scorer config keys")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scorer config key, e.g. branches=[semantic,style]; repeatable")
    train.add_argument("--seed", type=int, default=None, help="initialisation and batch-order seed")
    train.add_argument("--json", action="store_true", help="print JSON only")
    train.set_defaults(handler=cmd_train)

    score = sub.add_parser("score", help="score one response: reward and per-dimension contributions")
    score.add_argument("--model", required=True, help="a folder written by `lifelong reward train`")
    score.add_argument("--prompt", required=True)
    score.add_argument("--response", required=True)
    score.add_argument("--json", action="store_true", help="print JSON only")
    _add_unverified_option(score)
    score.set_defaults(handler=cmd_score)

    ev = sub.add_parser("eval", help="pairwise accuracy on preference pairs, overall and per dimension")
    ev.add_argument("--model", required=True,
                    help="a folder written by `lifelong reward train`, or a scorer that trains nothing (grm)")
    ev.add_argument("--data", default=None, help="preference JSONL (default: the bundled held-out split)")
    ev.add_argument("--format", default="auto", choices=FORMATS,
                    help="format of --data: plain/HH-RLHF/UltraFeedback preferences, RM-Bench (every chosen x "
                         "rejected pair, easy/normal/hard) or JudgeBench (A>B / B>A); auto: told by the first record")
    ev.add_argument("--json", action="store_true", help="print JSON only")
    _add_unverified_option(ev)
    ev.set_defaults(handler=cmd_eval)

    sbm = sub.add_parser("sbm-train", help="train a generative side branch's LoRA adapter (best-of-N by a judge, "
                         "then SFT)")
    sbm.add_argument("--branch", required=True, help="the SBM: sbm-semantic, sbm-entity, sbm-fact-check or sbm-style")
    sbm.add_argument("--data", default=None, help="preference JSONL (default: the bundled training split)")
    sbm.add_argument("--format", default="auto", choices=FORMATS, help="format of --data (as for train)")
    sbm.add_argument("--pairs", type=int, default=24,
                     help="train on this many pairs, spread over the data (default 24; 0: all)")
    sbm.add_argument("--out", required=True, help="folder for the adapter (adapter.safetensors, sbm.json)")
    sbm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="a training option, e.g. candidates=4, epochs=2, llm=PATH; repeatable")
    sbm.add_argument("--seed", type=int, default=None, help="sampling and initialisation seed")
    sbm.add_argument("--json", action="store_true", help="print JSON only")
    sbm.set_defaults(handler=cmd_sbm_train)


def _add_unverified_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-unverified", action="store_true",
                        help="load a model folder whose config.json records no head_sha256 (saved before the "
                             "checksum existed, or with it removed): its weights are then not checked")


def _load_pairs(path: str | None, split: str, format: str = "auto") -> list[Any]:  # noqa: A002
    return load_pairs(path, format) if path else bundled_preferences(split)


def load_saved_scorer(folder: str | Path, *, allow_unverified: bool = False) -> tuple[str, Any]:
    """The name and the scorer saved in ``folder``, loaded by the registered scorer its ``config.json`` names.

    A folder that is not a saved scorer raises a one-line UserError naming the folder and what is wrong.
    """
    folder = Path(folder)
    if not folder.exists() and "/" not in str(folder):  # a scorer that trains nothing, named instead of a folder
        try:
            spec = get("scorer", str(folder))
        except RegistryError:
            spec = None
        if spec is not None and getattr(spec.factory, "trains_nothing", False):
            return spec.name, create("scorer", spec.name)
    name = read_meta(folder)["scorer"]  # the contract's one-line errors for a folder that is not a saved scorer
    return name, load_scorer(folder, allow_unverified=allow_unverified)


def cmd_train(args: argparse.Namespace) -> int:
    get("scorer", args.scorer)  # unknown name: error before anything else
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    config = load_yaml(args.config) if args.config else {}
    config = deep_merge(config, parse_overrides(args.overrides))
    if args.seed is not None:
        config["seed"] = args.seed
    pairs = _load_pairs(args.data, "train", args.format)
    model = create("scorer", args.scorer, **config)
    print(f"training {args.scorer} on {len(pairs)} pairs ...", file=sys.stderr, flush=True)
    summary = model.fit(pairs)
    model.save(out)
    if args.json:
        print(json.dumps({"scorer": args.scorer, "out": str(out), "training": summary}))
    else:
        if summary.get("train_accuracy") is None:  # a scorer that trains nothing (grm)
            print(f"{args.scorer}: nothing to train (saved its config; {summary['n_pairs']} pairs not used)")
        else:
            print(f"{args.scorer}: trained on {summary['n_pairs']} pairs in {summary['seconds']:.1f} s "
                  f"(train accuracy {summary['train_accuracy']:.3f}, final loss {summary['final_loss']:.4f})")
        print(f"saved to {out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    text_argument(args.prompt, "--prompt")
    text_argument(args.response, "--response")
    if not args.prompt.strip() or not args.response.strip():
        raise UserError("--prompt and --response must be non-empty")
    name, model = load_saved_scorer(args.model, allow_unverified=args.allow_unverified)
    result = model.score(args.prompt, args.response)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"reward: {result.reward:+.4f}  ({name})")
    print("contributions (they sum to the reward):")
    for term, value in sorted(result.contributions.items(), key=lambda kv: -abs(kv[1])):
        print(f"  {term:<11} {value:+.4f}")
    for branch, text in result.branch_texts.items():
        print(f"  [{branch}] {text}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    pairs = _load_pairs(args.data, "heldout", args.format)
    name, model = load_saved_scorer(args.model, allow_unverified=args.allow_unverified)
    report = grouped_report(pairs, model.evaluate)  # per domain and level too, where the data has them
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{name}: pairwise accuracy {report['accuracy']:.3f} on {report['n_pairs']} pairs")
    if "order_agreement" in report:  # a pairwise judge (grm): how often both orders pick the same response
        print(f"  both orders agree on {report['order_agreement']:.3f} of the pairs; "
              f"first order alone {report['first_order_accuracy']:.3f}")
    for key, title in (("per_dimension", "dimension"), ("per_domain", "domain"), ("per_level", "level"),
                       ("per_domain_level", "domain/level")):
        if report.get(key):
            print(f" per {title}:")
            for group, row in report[key].items():
                print(f"  {group:<20} {row['accuracy']:.3f}  (n={row['n_pairs']})")
    return 0


def cmd_sbm_train(args: argparse.Namespace) -> int:
    from lifelong.platform.config import build_config
    from lifelong.scorers.branches.sbm import DIMENSIONS
    from lifelong.scorers.branches.sbm_train import SBMTrainConfig, train_sbm

    if args.branch not in DIMENSIONS:
        raise UserError(f"unknown SBM branch {args.branch!r}; allowed values: {', '.join(DIMENSIONS)}")
    if args.pairs < 0:
        raise UserError(f"--pairs must be >= 0, got {args.pairs}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    config = build_config(SBMTrainConfig, parse_overrides(args.overrides))
    pairs = _load_pairs(args.data, "train", args.format)
    if args.pairs and args.pairs < len(pairs):  # spread over the file, so every kind of pair is represented
        step = len(pairs) / args.pairs
        pairs = [pairs[int(i * step)] for i in range(args.pairs)]
    print(f"training {args.branch} on {len(pairs)} pairs ...", file=sys.stderr, flush=True)
    report = train_sbm(args.branch, pairs, out, config=config, seed=args.seed)
    if args.json:
        print(json.dumps({"branch": args.branch, "out": str(out), "training": report}))
    else:
        print(f"{args.branch}: {report['n_texts']} texts, best of {report['candidates']} by {report['judge']} "
              f"(kept {report['judge_best_mean']:.3f} vs mean candidate {report['judge_candidates_mean']:.3f}); "
              f"SFT loss {report['sft_loss_first_epoch']:.3f} -> {report['sft_loss_last_epoch']:.3f}; "
              f"{report['seconds']:.0f} s")
        print(f"saved to {out}")
    return 0
