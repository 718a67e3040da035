"""torch.distributed runs: two gloo processes on the CPU, as `torchrun --nproc_per_node 2 -m lifelong run`
(continued in test_distributed_ranks.py)."""

import json

import numpy as np
import pytest
from _distributed import ARGS, launch, torchrun

from lifelong.incremental.distributed import local_share, shard_indices
from lifelong.incremental.learner import DistributedInfo


@pytest.mark.parametrize("strategy", ["naive", "der", "icarl"])
def test_two_gloo_processes_match_one_process(strategy, tmp_path, cli):
    torchrun("--strategy", strategy, "--out", str(tmp_path / "ddp"), *ARGS)
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["world_size"] == 2
    # DDP kept the two replicas bit-identical (a missing gradient all-reduce shows up here as ~0.2)
    assert ddp["replica_divergence"] == 0.0

    single = cli("run", "--strategy", strategy, "--out", str(tmp_path / "one"), "--json", *ARGS)
    one = json.loads(single.stdout)
    assert one["world_size"] == 1 and "replica_divergence" not in one
    # same global batch, different shards per step: close, not bit-identical
    assert np.max(np.abs(np.asarray(ddp["accuracy_matrix"]) - np.asarray(one["accuracy_matrix"]))) < 0.05


def test_a_strategy_without_the_capability_is_refused(cli, tmp_path, monkeypatch):
    # the variables are read when the run starts, so the forked command (no fresh interpreter) sees them
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    result = cli("run", "--strategy", "lwf", "--out", str(tmp_path / "x"), *ARGS)
    assert result.code == 2 and "lwf is not distributed_safe" in result.stderr
    assert not (tmp_path / "x").exists()


def test_training_shards_are_padded_to_equal_length_and_evaluation_shards_are_not():
    ranks = [DistributedInfo(rank=r, world_size=3) for r in range(3)]
    train = [shard_indices(10, info) for info in ranks]
    assert [len(s) for s in train] == [4, 4, 4]  # an unequal count would leave one rank waiting in all-reduce
    assert sorted(i for s in train for i in s) == sorted(list(range(10)) + [0, 1])
    evaluation = [shard_indices(10, info, pad=False) for info in ranks]
    assert sorted(i for s in evaluation for i in s) == list(range(10))


def test_a_memory_budget_is_split_over_the_ranks():
    assert [local_share(200, DistributedInfo(rank=r, world_size=3)) for r in range(3)] == [67, 67, 66]
    assert local_share(200, DistributedInfo()) == 200


COUNT_SAMPLES = '''
import json, sys
import torch
from lifelong.benchmarks.split_digits import SplitDigitsConfig, split_digits
from lifelong.incremental import distributed
from lifelong.platform import registry
from lifelong.incremental.learner import RunContext

info = distributed.current_distributed_info()
stream = split_digits(SplitDigitsConfig(n_experiences=2, train_per_class=30, seed=0))  # imports Avalanche first
device = distributed.setup(info, torch.device("cpu"))
spec = registry.get("strategy", "replay")
learner = spec.factory(spec.config(epochs=1, batch_size=8, mem_size=20),
                       RunContext(stream=stream, device=device, seed=0, distributed=info))
counts, shards = [], []
for i in range(2):
    seen = [0]
    def count(module, inputs, output):
        if module is learner.model and torch.is_grad_enabled():
            seen[0] += len(inputs[0])
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    shard = distributed.shard_experience(stream.train_stream[i], info)
    learner.train_experience(shard)
    handle.remove()
    counts.append(seen[0])
    shards.append(len(shard.dataset))
# one file per rank: two ranks printing at once can interleave their lines
with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as report:
    json.dump({"rank": info.rank, "counts": counts, "shards": shards}, report)
distributed.teardown(info)
'''


def test_each_rank_trains_on_its_whole_shard_plus_replay(tmp_path):
    """Avalanche's replay loader adds its own DistributedSampler when a process group exists, which would
    shard the shard (each rank seeing a quarter of the data); the bridge switches that off."""
    script = tmp_path / "count_samples.py"
    script.write_text(COUNT_SAMPLES)
    launch(str(script), str(tmp_path))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    for r in reports:
        assert r["counts"][0] == r["shards"][0]  # first experience: every sample of the shard, once
        assert r["counts"][1] > r["shards"][1]  # then the shard again, plus replayed memory
