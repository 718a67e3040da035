"""torch.distributed runs, continued (a second module so the two pytest workers share them): a resumed two-process
run equals an uninterrupted one, and the training components stay equal on every rank."""

import json

from _distributed import ARGS, launch, torchrun


def test_a_resumed_distributed_run_equals_an_uninterrupted_one(tmp_path, cli):
    # replay: each rank holds its own half of the memory, which the checkpoint must carry per rank
    torchrun("--strategy", "replay", "--out", str(tmp_path / "full"), *ARGS)
    full = json.loads((tmp_path / "full" / "results.json").read_text())

    torchrun("--strategy", "replay", "--out", str(tmp_path / "cut"), "--stop-after", "1", *ARGS)
    assert not (tmp_path / "cut" / "results.json").exists()
    # a checkpoint of two processes is not resumed by one
    refused = cli("run", "--strategy", "replay", "--out", str(tmp_path / "cut"), "--resume", *ARGS)
    assert refused.code == 2 and "written by a run of 2 process(es)" in refused.stderr
    torchrun("--strategy", "replay", "--out", str(tmp_path / "cut"), "--resume", *ARGS)
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]



COMPONENT_STATE = '''
import hashlib, json, sys
import torch
from lifelong.benchmarks.split_digits import SplitDigitsConfig, split_digits
from lifelong.incremental import distributed
from lifelong.platform import registry
from lifelong.incremental.learner import RunContext

info = distributed.current_distributed_info()
stream = split_digits(SplitDigitsConfig(n_experiences=2, train_per_class=30, seed=0))
device = distributed.setup(info, torch.device("cpu"))
torch.manual_seed(info.rank)  # the ranks' random states differ, as they may in a real run
spec = registry.get("strategy", "naive")
config = spec.config(epochs=2, batch_size=16, model="spiking-tiny", components=["kd", "esl"],
                     component_config={"kd": {"feature": "hint", "teacher_model": "mlp"}, "esl": {"T_iter": 2}})
config.validate()
learner = spec.factory(config, RunContext(stream=stream, device=device, seed=0, distributed=info))
learner.train_experience(distributed.shard_experience(stream.train_stream[0], info))

def digest(tree):
    h = hashlib.sha256()
    def walk(node, key=""):
        if isinstance(node, dict):
            for k in sorted(node):
                walk(node[k], f"{key}.{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}")
        elif isinstance(node, torch.Tensor):
            h.update(key.encode()); h.update(node.detach().cpu().contiguous().numpy().tobytes())
    walk(tree)
    return h.hexdigest()

parts = {"student": {k: v for k, v in distributed.unwrap(learner.model).named_parameters()},
         "kd": learner.components.components["kd"].state_dict(),
         "esl": learner.components.components["esl"].state_dict()}
with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as report:
    json.dump({name: digest(tree) for name, tree in parts.items()}
              | {"has_teacher": parts["kd"].get("teacher") is not None,
                 "adapters": len(parts["kd"]["adapters"])}, report)
distributed.teardown(info)
'''


def test_training_components_stay_equal_on_every_rank(tmp_path):
    """A joint distillation teacher and its adapters train outside DDP and the sparse masks are drawn by each
    rank: they must be the same on every rank, or the ranks distil from different teachers."""
    script = tmp_path / "component_state.py"
    script.write_text(COMPONENT_STATE)
    launch(str(script), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["has_teacher"] and ranks[0]["adapters"] > 0  # the parts under test exist
    assert ranks[0] == ranks[1]
