"""Training components (kd, esl, rkd) and the TET loss: each mechanism on tiny tensors with a known answer (the
LaSNN layer-wise schedule and rkd's prune score worked out by hand, TET inside the training loop of two strategies), each
component through a run on the tiny split-digits stream, exact resume, and the refusal for a strategy that does
not accept components."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_STREAM
from torch import nn

from lifelong.components.esl import ESLConfig, EvolutionarySparsity, layer_densities, maskable
from lifelong.components.kd import attention_map, response_kd
from lifelong.incremental.learner import RunContext, TrainingState, tet_loss
from lifelong.incremental.run import resolve_config, run_experiment
from lifelong.platform.config import ConfigError
from lifelong.platform.errors import UserError


def _config(strategy: str, **extra):
    # the tiny stream cut to 10 training images a class: these runs check mechanics, not accuracy
    return resolve_config(strategy=strategy, benchmark="split-digits", seed=0,
                          overrides={**TINY_STREAM, "train_per_class": 10, "epochs": 1, **extra})


# -------------------------------------------------------------------------------------------- losses by hand
def test_response_kd_and_its_gradient_match_a_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], requires_grad=True)
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    tau = 2.0
    loss = response_kd(s, t, tau)
    loss.backward()
    expected, grad = 0.0, []
    for i in range(2):
        p = [math.exp(v / tau) for v in t[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [math.exp(v / tau) for v in s[i].tolist()]
        q = [v / sum(q) for v in q]
        expected += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q))
        grad.append([tau * (qj - pj) / 2 for pj, qj in zip(p, q)])  # d/ds of tau^2 * KL / B
    assert loss.item() == pytest.approx(tau * tau * expected / 2, rel=1e-5)
    assert torch.allclose(s.grad, torch.tensor(grad), atol=1e-6)


def test_tet_is_the_mean_of_per_step_cross_entropies():
    steps = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # T=3, B=1, C=2
    y = torch.tensor([0])
    by_hand = [-math.log(math.exp(a[y]) / (math.exp(a[0]) + math.exp(a[1]))) for a in steps[:, 0].tolist()]
    assert tet_loss(steps, y).item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)


def test_attention_map_is_the_normalised_channel_mean_of_squares():
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # B=1, C=2, H=1, W=2: channel mean of squares (1, 2)
    assert torch.allclose(attention_map(f), torch.tensor([[1.0, 2.0]]) / math.sqrt(5))


# ------------------------------------------------------------------------------------------------- masks
def test_erdos_renyi_densities_average_to_the_target_and_cap_at_one():
    shapes = {"a": (4, 1, 3, 3), "b": (64, 64, 3, 3), "c": (100, 640)}
    dens = layer_densities(shapes, 0.1)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(dens[n] * sizes[n] for n in shapes) / sum(sizes.values()) == pytest.approx(0.1)
    assert dens["a"] == 1.0 and dens["b"] < dens["c"] < 1.0


class _Context:
    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.seed = 0


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16))
        self.classifier = nn.Linear(16, 4)  # heads stay dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_esl_keeps_each_layers_density_and_regrows_at_zero_with_zeroed_optimizer_state():
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    esl = EvolutionarySparsity(ESLConfig(density=0.3, T_iter=2, prune_rate=0.5, grow="gradient"), _Context())
    state = TrainingState(model=model, optimizer=opt)
    esl.before_experience(state)
    assert set(maskable(model)) == {"features.0.weight", "features.3.weight"}
    counts = {n: int((o >= 0).sum()) for n, o in esl.owner.items()}
    x = torch.randn(5, 3, 6, 6)
    for step in range(4):
        before = {n: (o >= 0).clone() for n, o in esl.owner.items()}
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        esl.after_backward(state)
        for n, p in maskable(model).items():  # inactive weights get no gradient
            assert not p.grad[~before[n]].any()
        opt.step()
        esl.after_step(state)
        for n, p in maskable(model).items():
            active = esl.owner[n] >= 0
            assert int(active.sum()) == counts[n]  # the density never changes
            assert not p[~active].any()  # inactive weights are zero
            grown = active & ~before[n]
            if step % 2 == 1:  # an update step: half the active weights were replaced
                assert int(grown.sum()) == int(0.5 * counts[n])
                assert not p[grown].any()
                assert not opt.state[p]["momentum_buffer"][grown].any()
            else:
                assert not grown.any()
    assert esl.updates == 2 and esl.density() == pytest.approx(sum(counts.values()) / sum(
        o.numel() for o in esl.owner.values()))


def test_per_experience_masks_freeze_earlier_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 20))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    esl = EvolutionarySparsity(ESLConfig(density=0.25, T_iter=100, per_experience=True), _Context())
    esl.before_experience(TrainingState(model=model, optimizer=opt, experience=0))
    first = esl.owner["0.weight"] == 0
    esl.after_experience(TrainingState(model=model))
    state = TrainingState(model=model, optimizer=opt, experience=1)
    esl.before_experience(state)
    second = esl.owner["0.weight"] == 1
    assert not (first & second).any() and int(second.sum()) == int(first.sum())
    kept = model[0].weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        esl.after_backward(state)
        opt.step()
        esl.after_step(state)
    assert torch.equal(model[0].weight[first], kept[first])  # experience 0's weights did not move
    assert not torch.equal(model[0].weight[second], kept[second])


# ------------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run_experiment(_config("naive", model="mlp", n_experiences=1), out=out, progress=False)
    return out


def test_kd_and_esl_through_lifelong_run(cli, tmp_path):
    result = cli("run", "--strategy", "naive", "--set", "n_experiences=2", "--set", "train_per_class=10",
                 "--set", "epochs=1", "--set", "batch_size=16", "--set", "components=[kd,esl]",
                 "--set", "kd.feature=hint",
                 "--set", "esl.density=0.2", "--set", "esl.T_iter=2", "--out", str(tmp_path), "--json")
    assert result.code == 0, result.stderr
    import json

    summary = json.loads(result.stdout)["strategy_summary"]["components"]
    assert summary["kd"]["pairs"] == 2 and summary["kd"]["last_batch"]["response"] > 0
    assert summary["esl"]["density"] == pytest.approx(0.2, abs=1e-3) and summary["esl"]["updates"] > 0


def test_kd_from_a_checkpoint_teacher_and_a_bad_teacher_run(teacher_run, tmp_path):
    res = run_experiment(_config("naive", model="spiking-tiny", components=["kd"],
                                 kd={"teacher": "checkpoint", "teacher_run": str(teacher_run)}),
                         out=tmp_path / "a", progress=False)
    assert res["strategy_summary"]["components"]["kd"]["last_batch"]["response"] > 0
    with pytest.raises(UserError, match="no checkpoint.pt in"):
        run_experiment(_config("naive", components=["kd"], kd={"teacher": "checkpoint", "teacher_run": str(tmp_path)}),
                       out=tmp_path / "b", progress=False)


@pytest.mark.parametrize("strategy, extra", [
    ("naive", {"model": "spiking-tiny", "components": ["kd", "esl"], "loss": "tet",
               "kd": {"feature": "attention", "schedule": "layerwise"}, "esl": {"T_iter": 4}}),
    ("replay", {"components": ["rkd"], "rkd": {"teacher": "previous", "T_iter": 3, "feature": "hint"}}),
    ("der", {"finetune_epochs": 1, "components": ["esl", "kd"],
             "esl": {"per_experience": True, "T_iter": 3, "grow": "random"}, "kd": {"teacher": "previous"}}),
])
def test_a_resumed_run_with_components_equals_an_uninterrupted_one(strategy, extra, tmp_path):
    full = run_experiment(_config(strategy, **extra), out=tmp_path / "full", progress=False)
    run_experiment(_config(strategy, **extra), out=tmp_path / "cut", progress=False, stop_after=1)
    resumed = run_experiment(_config(strategy, **extra), out=tmp_path / "cut", resume=True, progress=False)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["strategy_summary"]["components"] == full["strategy_summary"]["components"]


def test_alade_snn_takes_components_and_tet(tmp_path):
    res = run_experiment(_config("alade-snn", T=2, finetune_epochs=0, mem_size=20, loss="tet", components=["esl"],
                                 esl={"density": 0.5, "T_iter": 2}), out=tmp_path, progress=False)
    esl = res["strategy_summary"]["components"]["esl"]
    assert esl["updates"] > 0 and esl["density"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("strategy, module, extra", [
    ("naive", "lifelong.strategies._avalanche", {"model": "spiking-tiny"}),
    ("alade-snn", "lifelong.strategies.der", {"T": 2, "finetune_epochs": 0, "mem_size": 20}),
])
def test_loss_tet_is_the_loss_a_strategy_optimises(strategy, module, extra, tmp_path, monkeypatch):
    import importlib

    from lifelong.incremental.checkpoint import CHECKPOINT_NAME, load_checkpoint

    target = importlib.import_module(module)
    calls: list[tuple[float, float, float]] = []

    def spy(step_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = tet_loss(step_logits, y)
        steps = step_logits.detach().float()
        # worked out here: the mean over time steps of each step's cross-entropy, and the plain cross-entropy of
        # the time-averaged logits that loss=ce trains on
        per_step = sum(nn.functional.cross_entropy(steps[t], y) for t in range(len(steps))) / len(steps)
        calls.append((float(loss.detach()), float(per_step), float(nn.functional.cross_entropy(steps.mean(0), y))))
        return loss

    monkeypatch.setattr(target, "tet_loss", spy)
    weights = {}
    for loss in ("ce", "tet"):
        calls.clear()
        run_experiment(_config(strategy, loss=loss, **extra), out=tmp_path / loss, progress=False)
        weights[loss] = load_checkpoint(tmp_path / loss / CHECKPOINT_NAME)["learner"]["model"]
        if loss == "ce":
            assert calls == []  # cross-entropy runs never compute TET
    # every training batch of the tet run went through TET (2 experiences, 1 epoch each), each value is the mean of
    # the per-step cross-entropies, and it is not the time-averaged cross-entropy
    assert len(calls) >= 2
    assert all(value == pytest.approx(per_step, rel=1e-5) for value, per_step, _ in calls)
    assert any(abs(per_step - averaged) > 1e-4 for _, per_step, averaged in calls)
    # so the two runs from the same seed end with different weights
    assert any(not torch.equal(weights["ce"][k], weights["tet"][k]) for k in weights["ce"]
               if weights["ce"][k].is_floating_point())


def test_a_strategy_without_components_is_refused_in_one_line(cli):
    result = cli("run", "--strategy", "lwf", "--set", "components=[kd]")
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "lwf does not accept training components" in result.stderr and "naive" in result.stderr


def test_component_options_are_typed_and_checked():
    cfg = _config("naive", components="kd,esl", kd={"alpha": 0.5})
    assert cfg.strategy_config.component_config["kd"].alpha == 0.5
    assert cfg.strategy_config.component_config["esl"].density == 0.1  # defaults filled in
    with pytest.raises(ConfigError, match="unknown config key 'kd.alfa'"):
        _config("naive", components=["kd"], kd={"alfa": 1})
    with pytest.raises(ConfigError, match="options for component 'esl' given, but components does not name it"):
        _config("naive", components=["kd"], esl={"density": 0.5})
    with pytest.raises(ConfigError, match="rkd cannot be combined with esl"):
        _config("naive", components=["rkd", "esl"])
    with pytest.raises(ConfigError, match="unknown component 'kdd'; did you mean kd"):
        _config("naive", components=["kdd"])


# ------------------------------------------------------------------------------- schedules and scores by hand
def _stream_context(seed: int = 0) -> RunContext:
    """A run context for a component built by hand (the stream only sizes the joint teacher, replaced here)."""
    return RunContext(stream=SimpleNamespace(input_shape=(1, 8, 8), n_classes=3), device=torch.device("cpu"),
                      seed=seed)


def _relu_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))


def test_layerwise_schedule_distils_one_pair_per_epoch_shallow_first():
    from lifelong.components.kd import KDConfig, KnowledgeDistillation

    student, teacher = _relu_net(0), _relu_net(1)
    x, y = torch.randn(7, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    # the two ReLU outputs of each net, worked out here layer by layer; equal widths, so no adapter
    s1 = torch.relu(student[0](x)); s2 = torch.relu(student[2](s1))
    t1 = torch.relu(teacher[0](x)); t2 = torch.relu(teacher[2](t1))
    pair = [float(((s1 - t1) ** 2).mean().detach()), float(((s2 - t2) ** 2).mean().detach())]
    seen = {}
    for schedule in ("layerwise", "joint"):
        kd = KnowledgeDistillation(KDConfig(feature="hint", schedule=schedule, epochs_per_layer=2, alpha=0.0),
                                   _stream_context())
        kd.teacher = teacher
        state = TrainingState(model=student, x=x, y=y)
        kd.before_experience(state)
        for epoch in range(6):
            state.logits = student(x)
            kd.extra_loss(state)
            seen[schedule, epoch] = kd.last["feature"]
            kd.after_epoch(state)
        kd.after_experience(state)
    # LaSNN: pair 0 (shallow) in epochs 0-1, pair 1 from epoch 2 on, one pair at a time; joint: both, always
    for epoch in range(6):
        assert seen["layerwise", epoch] == pytest.approx(pair[0] if epoch < 2 else pair[1], rel=1e-5)
        assert seen["joint", epoch] == pytest.approx(pair[0] + pair[1], rel=1e-5)


def test_rkd_prunes_by_magnitude_plus_distillation_saliency():
    from lifelong.components.rkd import DistilledSparseStructure, RKDConfig

    student, teacher = _relu_net(2), _relu_net(3)
    config = RKDConfig(density=0.5, T_iter=1, prune_rate=0.5, grow="random", init="uniform", saliency=1.0,
                       temperature=2.0, alpha=1.0, teacher="joint")
    rkd = DistilledSparseStructure(config, _stream_context())
    rkd.kd.teacher = teacher
    opt = torch.optim.SGD(student.parameters(), lr=0.0)  # no step: the weights scored are the weights seen here
    state = TrainingState(model=student, optimizer=opt)
    rkd.before_experience(state)
    x, y = torch.randn(9, 6), torch.tensor([0, 1, 2] * 3)
    state.x, state.y = x, y
    state.logits = student(x)
    # the distillation term and its gradient on the first masked layer, worked out here
    w = student[0].weight
    p_t = torch.softmax(teacher(x).detach() / 2.0, 1)
    log_q = torch.log_softmax(student(x) / 2.0, 1)
    kd_by_hand = 4.0 * (p_t * (p_t.log() - log_q)).sum(1).mean()
    g = torch.autograd.grad(kd_by_hand, w)[0]
    active = rkd.esl.owner["0.weight"] >= 0
    magnitude, saliency = w.detach().abs(), (w.detach() * g).abs()
    score = magnitude / magnitude[active].mean() + saliency / saliency[active].mean()
    k = int(0.5 * int(active.sum()))
    expect = set(active.flatten().nonzero().squeeze(1)[torch.topk(score[active], k, largest=False).indices].tolist())
    by_magnitude = set(active.flatten().nonzero().squeeze(1)[
        torch.topk(magnitude[active], k, largest=False).indices].tolist())
    assert expect != by_magnitude  # on this draw the saliency changes the choice, so the test can tell them apart

    loss = nn.functional.cross_entropy(state.logits, y) + rkd.extra_loss(state)
    assert float(rkd.kd.last["response"]) == pytest.approx(float(kd_by_hand.detach()), rel=1e-5)
    loss.backward()
    rkd.after_backward(state)
    opt.step()
    rkd.after_step(state)
    pruned = set((active & (rkd.esl.owner["0.weight"] < 0)).flatten().nonzero().squeeze(1).tolist())
    assert pruned == expect
