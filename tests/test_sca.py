"""``sca`` (components/sca.py): the least active channels go, pruned channels stay silent after batch norm in
training and evaluation, the slim copy computes what the masked network computes, and ``lifelong run`` takes it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_STREAM

from lifelong.adapters.nets.backbones import build_backbone
from lifelong.components.sca import SCA, SCAConfig, find_units, slim
from lifelong.incremental.learner import TrainingState

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _train(model, sca, steps=3, epochs=1, seed=0):
    """A few SGD steps on random 8x8 images with the component's hooks, as a learner calls them."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = TrainingState(model=model, optimizer=opt)
    sca.before_experience(state)
    model.train()
    for epoch in range(epochs):
        state.epoch = epoch
        for _ in range(steps):
            x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            sca.after_backward(state)
            opt.step()
            sca.after_step(state)
        sca.after_epoch(state)
    sca.after_experience(state)


def _component(**options) -> SCA:
    config = SCAConfig(**{"target_sparsity": 0.5, "ramp": 1, **options})
    config.validate()
    return SCA(config, context=None)


@pytest.mark.parametrize("score", ["potential", "rate"])
def test_the_least_active_channels_are_pruned(score) -> None:
    torch.manual_seed(0)
    model = build_backbone("spiking-tiny", (1, 8, 8), 10)
    unit = find_units(model)[0]
    with torch.no_grad():  # channels 0..7 get almost no current: they are the least active
        unit.bn.weight[:8] = 0.01
        unit.bn.bias[:8] = 0.0
        unit.bn.bias[8:] = 1.0
    sca = _component(score=score)
    _train(model, sca)
    assert sca.masks[unit.name].tolist() == [False] * 8 + [True] * 8
    assert sca.summary()["channel_sparsity"] == pytest.approx(0.5)


def test_pruned_channels_stay_silent_after_batch_norm() -> None:
    torch.manual_seed(1)
    model = build_backbone("spiking-tiny", (1, 8, 8), 10)
    sca = _component()
    _train(model, sca, steps=2, epochs=2)
    units = find_units(model)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        seen = {}
        handles = [u.act.register_forward_hook(
            lambda m, inp, out, name=u.name: seen.__setitem__(name, (inp[0].detach(), out.detach())))
            for u in units]
        model(torch.randn(8, 1, 8, 8) * 3)
        for h in handles:
            h.remove()
        for u in units:
            off = ~sca.masks[u.name]
            assert int(off.sum()) == u.channels // 2
            current, spikes = seen[u.name]  # [T, B, C, H, W]
            assert bool((current[:, :, off] == 0).all()), (mode, u.name)  # the bias does not leak back in
            assert float(spikes[:, :, off].sum()) == 0.0
            assert float(spikes[:, :, ~off].sum()) > 0.0


@pytest.mark.parametrize("backbone", ["spiking-tiny", "cnn-28"])
def test_slim_network_gives_the_masked_outputs(backbone) -> None:
    torch.manual_seed(2)
    model = build_backbone(backbone, (1, 8, 8), 10)
    sca = _component(target_sparsity=0.6)
    _train(model, sca, steps=2)
    small = slim(model)
    model.eval(), small.eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-5)
    for dense, thin in zip(find_units(model), find_units(small)):
        kept = int(sca.masks[dense.name].sum())
        assert thin.conv.weight.shape[0] == thin.bn.num_features == thin.consumer.weight.shape[1] == kept
        assert kept < dense.channels
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_regrowth_returns_the_pruned_channels_with_the_largest_output_gradient() -> None:
    torch.manual_seed(3)
    model = build_backbone("cnn-28", (1, 8, 8), 10)
    sca = _component(regrow_fraction=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = TrainingState(model=model, optimizer=opt)
    sca.before_experience(state)
    units = find_units(model)
    model.train()
    pruned_before: dict[str, torch.Tensor] = {}
    for epoch in range(3):
        # worked out here, apart from the component's own hooks: |sum of dLoss/d(output)| per channel, per batch
        grads = {u.name: torch.zeros(u.channels) for u in units}
        outputs: dict[str, torch.Tensor] = {}
        handles = [u.act.register_forward_hook(lambda m, i, out, name=u.name: outputs.__setitem__(name, out))
                   for u in units]
        for _ in range(2):
            x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
            loss = F.cross_entropy(model(x), y)
            for out in outputs.values():
                out.retain_grad()
            opt.zero_grad()
            loss.backward()
            for name, out in outputs.items():
                grads[name] += out.grad.sum((0, 2, 3)).abs()
            sca.after_backward(state)
            opt.step()
            sca.after_step(state)
        for h in handles:
            h.remove()
        pruned_before = {u.name: (~sca.masks[u.name]).clone() for u in units}
        sca.after_epoch(state)
    sca.after_experience(state)
    assert sca.updates == 3 and sca.summary()["channel_sparsity"] == pytest.approx(0.5)
    regrown_total = 0
    for u in units:
        was_pruned = pruned_before[u.name].nonzero().flatten()
        back = set((pruned_before[u.name] & sca.masks[u.name]).nonzero().flatten().tolist())
        k = int(0.5 * len(was_pruned))
        largest = set(was_pruned[torch.topk(grads[u.name][was_pruned], k).indices].tolist())
        assert back == largest, u.name
        regrown_total += len(back)
    assert regrown_total == sca.history[-1]["regrown"] > 0


def test_sca_through_lifelong_run_and_resume(tmp_path) -> None:
    from lifelong.incremental.run import resolve_config, run_experiment

    config = resolve_config(strategy="naive", benchmark="split-digits", seed=0,
                            overrides={**TINY_STREAM, "train_per_class": 10, "epochs": 2, "model": "spiking-tiny",
                                       "components": ["sca"], "sca": {"ramp": 1, "target_sparsity": 0.25}})
    full = run_experiment(config, out=tmp_path / "full", progress=False)
    summary = full["strategy_summary"]["components"]["sca"]
    assert summary["channel_sparsity"] == pytest.approx(0.25)
    assert summary["updates"] == 4  # one per epoch, over both experiences
    # a run stopped after the first experience and resumed prunes the same channels and scores the same
    run_experiment(config, out=tmp_path / "cut", progress=False, stop_after=1)
    resumed = run_experiment(config, out=tmp_path / "cut", resume=True, progress=False)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["strategy_summary"]["components"] == full["strategy_summary"]["components"]
