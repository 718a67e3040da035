"""The ``lifelong`` command.

Each command family lives in its own module of this package with an ``add_parser(subparsers)`` function; the
leaf parsers set ``handler=function(args) -> int``. A ``UserError`` anywhere becomes one line on stderr and exit
code 2. Heavy third-party modules (torch, transformers, faiss) are imported where they are used, so
``lifelong --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lifelong.cli import cil, convert, demo, detect, edit, fewshot, new, reward, serve
from lifelong.platform.errors import UserError, one_line, path_os_error

# Command families, in the order shown in --help.
COMMAND_FAMILIES = (cil, fewshot, detect, convert, edit, serve, reward, demo, new)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: same one-line form, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lifelong", description="Continual learning and lifelong model editing.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for family in COMMAND_FAMILIES:
        family.add_parser(subparsers)
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
        print(f"lifelong: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lifelong: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``lifelong plugins list | head``): nothing left to say
        sys.stderr.close()
        return 0
    except OSError as exc:  # a path the checks did not foresee (a name too long for the file system): one line
        message = path_os_error(exc)
        if message is None:
            raise
        print(f"lifelong: error: {one_line(message)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
