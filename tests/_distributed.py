"""Shared by the torch.distributed test modules (two modules, so that `pytest -n 2 --dist loadscope` runs their
multi-process tests on both workers): two gloo processes launched as torchrun does."""

import os
import subprocess
import sys

from conftest import REPO

ARGS = ["--set", "n_experiences=2", "--set", "train_per_class=60", "--set", "epochs=5", "--set", "batch_size=32"]


def launch(*target):
    """Two gloo processes of ``target`` (a script and its arguments, or ``-m module ...``), one thread each."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def torchrun(*args):
    return launch("-m", "lifelong", "run", *args)
