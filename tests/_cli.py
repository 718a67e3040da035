"""Helpers of the tests that call the command line in-process and read its one-line errors."""

from __future__ import annotations

from lifelong.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``lifelong ARGV`` in this process: exit code, stdout, stderr."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    """The one error line of ``err`` (model-loading progress bars aside); fails unless there is exactly one."""
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and not x.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("lifelong: error: "), err
    return lines[0]
