"""``alade-snn``: the logit-alignment controller on a synthetic plant, OtoN after every step and its release in
fine-tuning, distillation from the previous model, and a tiny end-to-end run through ``lifelong run``."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from _bench import load_bench_script
from lifelong.benchmarks.split_digits import SplitDigitsConfig, split_digits
from lifelong.incremental.learner import RunContext
from lifelong.platform.config import ConfigError, build_config
from lifelong.strategies.alade_snn import AladeSNNConfig, AladeSNNLearner, AlignedLogits, LogitAlignmentController

TINY = {"epochs": 3, "finetune_epochs": 6, "finetune_milestones": [3], "batch_size": 32, "width_mult": 0.5,
        "T": 2, "mem_size": 40}


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _plant(g0: float, epochs: int, rate: float = 0.5) -> tuple[list[float], list[float]]:
    """A classifier that lowers the new-class logits towards b with a first-order lag: gap = g0 - effect."""
    ctrl = LogitAlignmentController()
    effect, bs, gaps = 0.0, [], []
    for _ in range(epochs):
        gap = g0 - effect
        gaps.append(gap)
        bs.append(ctrl.update(avg_new=gap, avg_old=0.0))
        effect += rate * (ctrl.b - effect)
    return bs, gaps


def test_controller_follows_the_authors_branches_by_hand() -> None:
    # gap 2: move b by 2; the gap halves each epoch (1, .5, .25) while the controller waits; at .125 it has
    # shrunk by more than 1/8 and its shrinkage (.125) is below a quarter of the fastest (1): move by .125;
    # gap 0 counts as "old >= new" and flips the direction without moving; gap -.0625 is new growth: b -= .0625;
    # then the gap stays and so does b.
    bs, gaps = _plant(2.0, 12)
    assert gaps[:5] == [2.0, 1.0, 0.5, 0.25, 0.125]
    assert bs[:8] == [2.0, 2.0, 2.0, 2.0, 2.125, 2.125, 2.0625, 2.0625]
    assert bs[-4:] == [2.0625] * 4


@pytest.mark.parametrize("g0", [3.0, -1.5, 0.7])
def test_controller_moves_b_the_right_way_and_settles(g0: float) -> None:
    bs, gaps = _plant(g0, 40, rate=0.3)
    assert bs[0] == pytest.approx(g0)  # new-class logits too high -> b > 0 (and the reverse)
    assert abs(gaps[-1]) < abs(g0) / 2  # damped: a residual gap may stay, but most of it is gone
    tail = bs[-10:]
    assert max(abs(a - b) for a, b in zip(tail, tail[1:])) < 1e-6 * abs(g0)  # settled: b no longer moves


def test_aligned_logits_shift_only_the_new_classes_from_the_start_epoch() -> None:
    ctrl = LogitAlignmentController()
    aligned = AlignedLogits(ctrl, known=2, start=3)
    logits = torch.arange(8.0).reshape(2, 4)
    assert aligned.end_epoch(2, (5.0, 1.0)) == {"b": 0.0}  # before the start epoch the controller is not fed
    assert aligned.end_epoch(3, None) == {"b": 0.0}  # nor when one side had no samples
    assert aligned.end_epoch(3, (5.0, 1.0)) == {"b": 4.0}  # new classes' target logits 4 above the old ones
    assert torch.equal(aligned(logits, 2), logits)
    shifted = aligned(logits, 3)
    assert torch.equal(shifted[:, :2], logits[:, :2]) and torch.equal(shifted[:, 2:], logits[:, 2:] + 4.0)


@pytest.fixture(scope="module")
def stream():
    return split_digits(SplitDigitsConfig(n_experiences=5, seed=0))


def _learner(stream, **overrides) -> AladeSNNLearner:
    cfg = build_config(AladeSNNConfig, {**TINY, **overrides})
    torch.manual_seed(0)
    return AladeSNNLearner(cfg, RunContext(stream=stream, device=torch.device("cpu"), seed=0))


def _block(learner: AladeSNNLearner, known: int) -> torch.Tensor:
    old_dim = learner.model.feature_dim * (learner.model.n_tasks - 1)
    return learner.model.classifier.weight[known:, :old_dim].detach().clone()


@pytest.fixture(scope="module")
def trained(stream):
    """Two experiences with every component on; records the OtoN block after every step and at fine-tuning."""
    learner = _learner(stream)
    learner.train_experience(stream.train_stream[0])
    record: dict[str, list] = {"steps": [], "finetune_entry": []}
    step, finetune = learner._after_optimizer_step, learner._finetune_classifier

    def after_step(known: int) -> None:
        step(known)
        record["steps"].append(_block(learner, known).abs().max().item())

    def at_finetune(x, y, known, gen):
        record["finetune_entry"].append(_block(learner, known).abs().max().item())
        return finetune(x, y, known, gen)

    learner._after_optimizer_step = after_step
    learner._finetune_classifier = at_finetune
    teacher_before = learner.model.classifier.weight.detach().clone()
    learner.train_experience(stream.train_stream[1])
    return learner, record, teacher_before


def test_oton_block_is_zero_after_every_step_and_released_in_finetuning(trained) -> None:
    learner, record, _ = trained
    n_samples = len(learner.context.stream.train_stream[1].dataset) + 40  # the experience + the memory
    n_steps = 3 * -(-n_samples // 32)  # three epochs of batches of 32
    assert len(record["steps"]) == n_steps
    assert record["steps"] == [0.0] * n_steps
    assert record["finetune_entry"] == [0.0]
    assert _block(learner, 2).abs().max() > 0  # released: fine-tuning re-initialised and trained the block


def test_without_oton_the_block_is_used(stream) -> None:
    learner = _learner(stream, oton=False, finetune_epochs=0)
    learner.train_experience(stream.train_stream[0])
    learner.train_experience(stream.train_stream[1])
    assert _block(learner, 2).abs().max() > 0


def test_distillation_is_zero_for_the_teacher_and_positive_otherwise(stream, trained) -> None:
    learner, _, teacher_before = trained
    assert torch.equal(learner._teacher["weight"], teacher_before)  # the previous model's classifier
    x = torch.stack([stream.train_stream[1].dataset[i][0] for i in range(16)])
    y = torch.tensor([int(stream.train_stream[1].dataset[i][1]) for i in range(16)])
    model = learner.model
    saved = copy.deepcopy(model.classifier.state_dict())
    old_dim = model.feature_dim
    with torch.no_grad():  # make the student's old-class logits the teacher's exactly
        model.classifier.weight[:2] = 0.0
        model.classifier.weight[:2, :old_dim] = learner._teacher["weight"]
    model.eval()
    out = model(x)
    assert out["features"][..., :old_dim].abs().sum() > 0  # the old extractor is alive
    same = learner._extra_loss(out, out["logits"].mean(0), y, 2).detach()
    with torch.no_grad():
        model.classifier.weight[:2, :old_dim] *= -1.0
    out = model(x)
    flipped = learner._extra_loss(out, out["logits"].mean(0), y, 2).detach()
    model.classifier.load_state_dict(saved)
    assert abs(float(same)) < 1e-6
    assert float(flipped) > 1e-3
    learner.config.distillation = False
    try:
        assert float(learner._extra_loss(out, out["logits"].mean(0), y, 2)) == 0.0
    finally:
        learner.config.distillation = True


def test_alignment_runs_in_finetuning_from_its_start_epoch(trained) -> None:
    learner, _, _ = trained
    log = learner.history[1]["finetune"]
    assert len(log["b"]) == 6 and log["b"][:3] == [0.0, 0.0, 0.0]  # offset only from the milestone (3) on
    assert log["b"][3] != 0.0 and (log["b"][3] > 0) == (log["gap"][3] > 0)
    s = learner.summary()
    assert s["T"] == 2 and 0.0 < s["mean_spike_rate"] < 1.0
    assert s["ops"]["sops_per_sample"] > 0 and s["ops"]["macs_per_sample"] > 0
    assert s["ops"]["sops_per_sample"] < s["ops"]["dense_macs_per_sample"]
    assert all(name.startswith("extractors.") for name in s["spike_rates"])


def test_config_names_bad_values() -> None:
    with pytest.raises(ConfigError, match="surrogate"):
        build_config(AladeSNNConfig, {"surrogate": "relu"})
    with pytest.raises(ConfigError, match="model"):
        build_config(AladeSNNConfig, {"model": "vgg"})
    with pytest.raises(ConfigError, match="oton"):
        build_config(AladeSNNConfig, {"oton": "maybe"})


def test_end_to_end_through_lifelong_run(tmp_path, capsys) -> None:
    from lifelong.cli.main import main

    out = tmp_path / "run"
    argv = ["run", "--strategy", "alade-snn", "--benchmark", "split-digits", "--out", str(out), "--json"]
    for kv in ("n_experiences=2", "epochs=3", "T=2", "width_mult=0.5", "finetune_epochs=4", "finetune_milestones=[2]"):
        argv += ["--set", kv]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["strategy"] == "alade-snn" and len(results["accuracy_matrix"]) == 2
    assert results["last_accuracy"] > 0.6  # 4 easy digit classes, far above chance (0.25)
    assert results["strategy_summary"]["n_extractors"] == 2
    assert results["config"]["strategy_config"]["T"] == 2
    assert main(["run", "--strategy", "alade-snn", "--out", str(tmp_path / "bad"), "--set", "surrogate=relu"]) == 2
    assert "surrogate" in capsys.readouterr().err


def test_the_ann_twin_differs_in_the_neuron_only(stream) -> None:
    """``bench/alade_ablation.py``'s ``ann-twin`` resolves to the ALADE-SNN config with ``neuron=relu`` and nothing
    else changed, and that learner builds ReLU extractors (no LIF neuron, one time step) of the same shape."""
    from lifelong.adapters.nets.spiking import LIF
    from lifelong.platform.config import to_dict

    ablation = load_bench_script("alade_ablation")
    protocol = {"train_per_class": 10, "test_per_class": 10}
    snn, ann = (to_dict(ablation.resolved(v, 0, protocol).strategy_config) for v in ("alade-snn", "ann-twin"))
    assert {k for k in snn if snn[k] != ann.get(k)} == {"neuron"} and set(snn) == set(ann)
    assert (snn["neuron"], ann["neuron"]) == ("lif", "relu") and snn["distillation"] and not ann["classifier_bias"]
    table = ablation.side_by_side(protocol)
    assert [line.split()[1] for line in table.splitlines() if line.startswith("*")] == ["neuron"]
    ctx = RunContext(stream=stream, device=torch.device("cpu"), seed=0)
    models = {}
    for neuron in ("lif", "relu"):
        learner = AladeSNNLearner(AladeSNNConfig(model="resnet-tiny", T=2, neuron=neuron), ctx)
        make, dim = learner._extractor_factory()
        models[neuron] = (make(), dim)
    assert models["lif"][1] == models["relu"][1]
    assert any(isinstance(m, LIF) for m in models["lif"][0].modules())
    assert not any(isinstance(m, LIF) for m in models["relu"][0].modules())
    assert sum(p.numel() for p in models["lif"][0].parameters()) == sum(p.numel() for p in models["relu"][0].parameters())
