"""Shared fixtures: tiny streams and a CLI runner that captures exit code, stdout and stderr."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A small, fast split-digits stream for end-to-end checks: 2 experiences, 40 training images per class.
TINY_STREAM = {"n_experiences": 2, "train_per_class": 40}


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 600) -> CliResult:
    """Run ``python -m lifelong ARGS`` in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "lifelong", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


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
