"""``lifelong reward train | score | eval``: reward scorers (``srm``, ``scalar-rm``) from the command line (DESIGN §6).

Without ``--data``, ``train`` uses the bundled preference set's training split and ``eval`` its held-out split.
Every input is checked before any work starts; a trained model is written atomically at the end, so a failed
run leaves no half-written model folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lifelong.benchmarks.preferences import bundled_preferences, load_preferences
from lifelong.platform.config import deep_merge, load_yaml, parse_overrides
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create, get
from lifelong.scorers.srm import load_scorer


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    reward = subparsers.add_parser("reward", help="train, apply and evaluate reward scorers (srm, scalar-rm)")
    sub = reward.add_subparsers(dest="reward_command", metavar="ACTION")
    sub.required = True

    train = sub.add_parser("train", help="train a scorer on preference pairs (Bradley-Terry)")
    train.add_argument("--scorer", required=True, help="registered scorer name: srm or scalar-rm")
    train.add_argument("--data", default=None, help="preference JSONL (default: the bundled training split)")
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
    score.set_defaults(handler=cmd_score)

    ev = sub.add_parser("eval", help="pairwise accuracy on preference pairs, overall and per dimension")
    ev.add_argument("--model", required=True, help="a folder written by `lifelong reward train`")
    ev.add_argument("--data", default=None, help="preference JSONL (default: the bundled held-out split)")
    ev.add_argument("--json", action="store_true", help="print JSON only")
    ev.set_defaults(handler=cmd_eval)


def _load_pairs(path: str | None, split: str) -> list[Any]:

    return load_preferences(path) if path else bundled_preferences(split)


def cmd_train(args: argparse.Namespace) -> int:

    get("scorer", args.scorer)  # unknown name: error before anything else
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    config = load_yaml(args.config) if args.config else {}
    config = deep_merge(config, parse_overrides(args.overrides))
    if args.seed is not None:
        config["seed"] = args.seed
    pairs = _load_pairs(args.data, "train")
    model = create("scorer", args.scorer, **config)
    print(f"training {args.scorer} on {len(pairs)} pairs ...", file=sys.stderr, flush=True)
    summary = model.fit(pairs)
    model.save(out)
    if args.json:
        print(json.dumps({"scorer": args.scorer, "out": str(out), "training": summary}))
    else:
        print(f"{args.scorer}: trained on {summary['n_pairs']} pairs in {summary['seconds']:.1f} s "
              f"(train accuracy {summary['train_accuracy']:.3f}, final loss {summary['final_loss']:.4f})")
        print(f"saved to {out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:

    if not args.prompt.strip() or not args.response.strip():
        raise UserError("--prompt and --response must be non-empty")
    model = load_scorer(args.model)
    result = model.score(args.prompt, args.response)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"reward: {result.reward:+.4f}  ({model.scorer})")
    print("contributions (they sum to the reward):")
    for name, value in sorted(result.contributions.items(), key=lambda kv: -abs(kv[1])):
        print(f"  {name:<11} {value:+.4f}")
    for name, text in result.branch_texts.items():
        print(f"  [{name}] {text}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:

    pairs = _load_pairs(args.data, "heldout")
    model = load_scorer(args.model)
    report = model.evaluate(pairs)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{model.scorer}: pairwise accuracy {report['accuracy']:.3f} on {report['n_pairs']} pairs")
    for dim, row in report["per_dimension"].items():
        print(f"  {dim:<12} {row['accuracy']:.3f}  (n={row['n_pairs']})")
    return 0
