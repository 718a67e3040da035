"""``lifelong convert``: turn a finished run's ANN into a spiking network and print its accuracy per time step.

The engine is ``incremental/convert.py``; this module parses the flags and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lifelong.platform.device import resolve_device
from lifelong.platform.errors import UserError

#: the names of ``adapters/nets/snn_conversion.py``'s ``SCHEMES``, written out so that building the parser (which
#: every ``lifelong`` command does) imports no torch; tests/test_new_user.py checks that the two agree
SCHEMES: tuple[str, ...] = ("plain", "ecl", "ecl-opt", "init-only", "dual-only")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser("convert", help="convert a finished run's ANN to an SNN and evaluate it per time step")
    convert.add_argument("--run", required=True, help="folder of a finished `lifelong run` (results.json, checkpoint.pt)")
    convert.add_argument("--timesteps", default="1,2,4,8", help="comma-separated time steps T to report (default 1,2,4,8)")
    convert.add_argument("--schemes", default="plain,ecl",
                         help=f"comma-separated conversion schemes (default plain,ecl; allowed: {', '.join(SCHEMES)})")
    convert.add_argument("--calibration-size", type=int, default=256,
                         help="training images on which ecl-opt optimises the initial potentials (default 256)")
    convert.add_argument("--device", default=None, help="auto (CUDA when available), cpu, cuda, cuda:N")
    convert.add_argument("--json", action="store_true", help="print conversion.json instead of the table")
    convert.set_defaults(handler=cmd_convert)


def parse_timesteps(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]`` (sorted, unique); anything else is a ``UserError``."""
    from lifelong.incremental.convert import MAX_TIMESTEPS  # torch-heavy: imported on use, not with the parser

    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--timesteps: expected comma-separated positive integers, got {text!r}") from None
    if not steps or steps[0] < 1 or steps[-1] > MAX_TIMESTEPS:
        raise UserError(f"--timesteps: expected comma-separated integers from 1 to {MAX_TIMESTEPS}, got {text!r}")
    return steps


def parse_schemes(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [n for n in names if n not in SCHEMES]
    if not names or bad:
        raise UserError(f"--schemes: {bad[0] if bad else text!r} is not a scheme; allowed values: {', '.join(SCHEMES)}")
    return list(dict.fromkeys(names))


def format_table(result: dict[str, Any]) -> str:
    schemes = list(result["schemes"])
    lines = [f"{result['strategy']} on {result['benchmark']}, seed {result['seed']}, model {result['model']}: "
             f"accuracy on all {result['test_samples']} test samples (%)",
             f"{'T':>5}  {'ANN':>7}" + "".join(f"  {s:>9}" for s in schemes)]
    ann = 100 * result["ann"]["accuracy"]
    for t in result["timesteps"]:
        row = "".join(f"  {100 * result['schemes'][s]['by_timestep'][str(t)]['accuracy']:>9.2f}" for s in schemes)
        lines.append(f"{t:>5}  {ann:>7.2f}{row}")
    rates = ", ".join(f"{s} {result['schemes'][s]['spike_rate_at_max_t']:.3f}" for s in schemes)
    lines.append(f"spike rate (spikes per neuron and step, T={result['timesteps'][-1]}): {rates}")
    return "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> int:
    from lifelong.incremental.convert import RESULT_NAME, convert_run  # torch-heavy: imported on use

    timesteps = parse_timesteps(args.timesteps)
    schemes = parse_schemes(args.schemes)
    device = resolve_device(args.device or "auto")
    result = convert_run(Path(args.run), timesteps, schemes, device, args.calibration_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(f"results: {Path(args.run) / RESULT_NAME}")
    return 0
