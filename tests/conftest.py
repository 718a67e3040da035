"""Shared fixtures: tiny streams and a CLI runner that captures exit code, stdout and stderr.

The suite runs in parallel workers (``make test``: pytest-xdist, ``-n 2 --dist loadscope``, so a module's
fixtures are made once, by the worker that runs the module). Each worker then gets its share of the cores as
torch threads (``OMP_NUM_THREADS``, set here before torch is imported, and inherited by the commands the tests
start), so two workers never fight over two cores. Tests write only under their ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # a worker of `pytest -n N`: cores / N torch threads
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
# A small, fast split-digits stream for end-to-end checks: 2 experiences, 40 training images per class.
TINY_STREAM = {"n_experiences": 2, "train_per_class": 40}


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 600) -> CliResult:
    """Run ``python -m lifelong ARGS`` in a separate process, as a user would.

    The process is forked from the test process, which has already imported torch, Avalanche and the plugins,
    and runs ``lifelong.cli.main.main`` with its own working folder, standard streams and exit code: what a fresh
    interpreter does, without its seconds of imports. A fresh interpreter is started instead where the fork would
    not be the same: with ``env`` (variables read at import time, ``PYTHONPATH`` plugins), off Linux, once CUDA is
    initialised here, for ``plugins`` (it lists this process's registry, which tests change), or with
    ``LIFELONG_TEST_SUBPROCESS=1`` set.
    """
    # `plugins` lists the registry, which tests change in-process (test plugins registered here would show)
    forked = _forked_cli(args, cwd or REPO, timeout) if _can_fork(env) and args[:1] != ("plugins",) else None
    if forked is not None:
        return forked
    proc = subprocess.run(
        [sys.executable, "-m", "lifelong", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _can_fork(env: dict[str, str] | None) -> bool:
    if env or not sys.platform.startswith("linux") or os.environ.get("LIFELONG_TEST_SUBPROCESS") == "1":
        return False
    torch = sys.modules.get("torch")
    return not (torch is not None and torch.cuda.is_initialized())


def _forked_cli(args: tuple[str, ...], cwd: Path, timeout: int) -> CliResult:
    from lifelong.incremental.compare import _preload

    _preload()  # once per test process: torch, Avalanche, the plugins; every forked command starts with them
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.setpgid(0, 0)  # its own process group, so a timeout kills what it started too
                os.chdir(cwd)
                for fd, path in ((1, out), (2, err)):
                    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(target, fd)
                    os.close(target)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                sys.stdin = open(0, closefd=False)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
                sys.argv = [str(REPO / "lifelong" / "__main__.py"), *args]
                signal.signal(signal.SIGINT, signal.default_int_handler)
                from lifelong.cli.main import main

                try:
                    code = main(list(args))
                except SystemExit as exc:  # argparse's --help and usage errors
                    if isinstance(exc.code, int) or exc.code is None:
                        code = exc.code or 0
                    else:
                        print(exc.code, file=sys.stderr)
                        code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(["lifelong", *args], timeout)
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status)
        return CliResult(code, out.read_text(errors="replace"), err.read_text(errors="replace"))


@pytest.fixture
def cli():
    return run_cli


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (restored after): ViT-sized steps oversubscribe two cores."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """One intra-op torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``): tiny
    convolutions and latency-bound models run faster so, and never spin against a busy two-core machine."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def stream():
    """split-digits without task labels, 5 experiences, seed 0: the stream the strategy unit tests share."""
    from lifelong.benchmarks.split_digits import SplitDigitsConfig, split_digits

    return split_digits(SplitDigitsConfig(n_experiences=5, seed=0, task_labels=False))
