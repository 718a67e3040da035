"""The ``lifelong`` command (DESIGN §6).

Each command family lives in its own module with an ``add_parser(subparsers)`` function; the leaf parsers set
``handler=function(args) -> int``. A ``UserError`` anywhere becomes one line on stderr and exit code 2.
Heavy modules are imported inside the handlers, so ``lifelong --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from lifelong.platform.errors import UserError

# Command families: module path of each ``add_parser``. Order is the order shown in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "lifelong.platform.cli_cil",
    "lifelong.platform.cli_edit",
    "lifelong.platform.cli_reward",
    "lifelong.platform.demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: same one-line form, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lifelong", description="Continual learning and lifelong model editing.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # a command family not built yet
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"lifelong: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lifelong: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
