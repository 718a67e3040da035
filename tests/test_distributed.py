"""torch.distributed runs: two gloo processes on the CPU, as `torchrun --nproc_per_node 2 -m lifelong run`."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO

ARGS = ["--set", "n_experiences=2", "--set", "train_per_class=60", "--set", "epochs=5", "--set", "batch_size=32"]


def _torchrun(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lifelong", "run", *args],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_gloo_processes_match_one_process_and_resume_exactly(tmp_path, cli):
    _torchrun("--strategy", "naive", "--out", str(tmp_path / "ddp"), *ARGS)
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["world_size"] == 2

    single = cli("run", "--strategy", "naive", "--out", str(tmp_path / "one"), "--json", *ARGS)
    one = json.loads(single.stdout)
    # same global batch, different shards per step: close, not bit-identical
    assert np.max(np.abs(np.asarray(ddp["accuracy_matrix"]) - np.asarray(one["accuracy_matrix"]))) < 0.05

    _torchrun("--strategy", "naive", "--out", str(tmp_path / "cut"), "--stop-after", "1", *ARGS)
    assert not (tmp_path / "cut" / "results.json").exists()
    _torchrun("--strategy", "naive", "--out", str(tmp_path / "cut"), "--resume", *ARGS)
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["accuracy_matrix"] == ddp["accuracy_matrix"]


def test_a_strategy_without_the_capability_is_refused(cli, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    result = cli("run", "--strategy", "lwf", "--out", str(tmp_path / "x"), *ARGS, env=env)
    assert result.code == 2 and "lwf is not distributed_safe" in result.stderr
    assert not (tmp_path / "x").exists()
