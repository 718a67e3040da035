"""The spiking building blocks: LIF dynamics and surrogate gradients against hand-computed values, statelessness,
the ResNet layouts, and the spike / operation counters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lifelong.adapters.nets.spiking import (
    LIF,
    NeuronConfig,
    SpikingResNet,
    count_ops,
    direct_encode,
    lif_multistep,
    lif_multistep_autograd,
    record_spikes,
    spike,
    spike_rates,
    time_average,
)
from lifelong.platform.config import ConfigError, build_config


def _seq(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(len(values), 1)


def test_lif_forward_hard_reset_by_hand() -> None:
    # u1 = 0.6; u2 = 0.3 + 0.6 = 0.9; u3 = 0.45 + 0.6 = 1.05 -> spike, u = 0; u4 = 0 + 1.5 -> spike
    s = lif_multistep(_seq(0.6, 0.6, 0.6, 1.5))
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    # exactly at threshold spikes (H(0) = 1, as spikingjelly)
    assert lif_multistep(_seq(1.0)).item() == 1.0


def test_lif_forward_soft_reset_and_decay_input_by_hand() -> None:
    # soft: u3 = 1.05 -> spike, u = 0.05; u4 = 0.025 + 0.1 = 0.125 (no spike); a hard reset would give 0.1
    s = lif_multistep(_seq(0.6, 0.6, 0.6, 0.1), v_reset=None)
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    s_big = lif_multistep(_seq(0.6, 0.6, 0.6, 0.96), v_reset=None)  # 0.025 + 0.96 = 0.985 < 1
    assert s_big.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    s_big2 = lif_multistep(_seq(0.6, 0.6, 0.6, 0.98), v_reset=None)  # 0.025 + 0.98 = 1.005 >= 1
    assert s_big2.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    # decay_input: u = 0.5 u + 0.5 x: 1.5 -> 0.75; then 0.375 + 0.75 = 1.125 -> spike
    assert lif_multistep(_seq(1.5, 1.5), decay_input=True).flatten().tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    "surrogate,alpha,x,expected",
    [
        ("triangle", 1.0, 0.8, 0.8),  # (1/g^2) max(0, g - |x - 1|) = 1 - 0.2
        ("triangle", 0.5, 0.8, 1.2),  # 4 * (0.5 - 0.2)
        ("triangle", 1.0, 2.5, 0.0),
        ("sigmoid", 4.0, 1.0, 1.0),  # 4 * 0.5 * 0.5
        ("sigmoid", 4.0, 1.5, 4 * (1 / (1 + math.exp(-2))) * (1 - 1 / (1 + math.exp(-2)))),
        ("arctan", 2.0, 1.0, 1.0),  # (a/2) / (1 + 0)
        ("arctan", 2.0, 1.5, 1.0 / (1 + (math.pi / 2) ** 2)),
    ],
)
def test_surrogate_gradients_by_hand(surrogate: str, alpha: float, x: float, expected: float) -> None:
    inp = _seq(x).requires_grad_(True)
    lif_multistep(inp, surrogate=surrogate, alpha=alpha).sum().backward()
    assert inp.grad.item() == pytest.approx(expected, abs=1e-12)


def test_backprop_through_time_by_hand() -> None:
    # x1 = 0.8: u1 = 0.8, s1 = 0, sg1 = 0.8; after reset u1' = (1 - s1) u1; x2 = 0.7: u2 = 0.4 + 0.7 = 1.1,
    # s2 = 1, sg2 = 0.9. d s2/d x1 = sg2 * 0.5 * d u1'/d x1, d u1'/d x1 = (1 - s1) - u1 * sg1 = 1 - 0.64.
    inp = _seq(0.8, 0.7).requires_grad_(True)
    s = lif_multistep(inp)
    assert s.flatten().tolist() == [0.0, 1.0]
    s.sum().backward()
    assert inp.grad.flatten().tolist() == pytest.approx([0.8 + 0.9 * 0.5 * 0.36, 0.9], abs=1e-12)
    # with detach_reset the reset path carries no gradient: d u1'/d x1 = 1 - s1 = 1
    inp2 = _seq(0.8, 0.7).requires_grad_(True)
    lif_multistep(inp2, detach_reset=True).sum().backward()
    assert inp2.grad.flatten().tolist() == pytest.approx([0.8 + 0.9 * 0.5, 0.9], abs=1e-12)


def test_fused_lif_is_bit_identical_to_the_step_by_step_form() -> None:
    """The fused autograd function against autograd on the step-by-step LIF, for every option it supports:
    spikes and input gradients equal (torch.equal) for each surrogate, hard reset to 0 and to another value,
    soft reset, detach_reset, decay_input, a tau other than 2, float32 and float64, an odd shape."""
    torch.manual_seed(0)
    checked = 0
    for surrogate, alpha in (("triangle", 1.0), ("triangle", 0.7), ("sigmoid", 4.0), ("arctan", 2.0)):
        for v_reset in (0.0, -0.3, None):
            for detach_reset in (False, True):
                for decay_input in (False, True):
                    for dtype, tau in ((torch.float32, 2.0), (torch.float64, 1.7)):
                        x = (torch.randn(5, 3, 37) * 1.5 + 0.5).to(dtype)
                        g = torch.randn(5, 3, 37).to(dtype)
                        args = (tau, 1.0, v_reset, decay_input, detach_reset, surrogate, alpha)
                        results = []
                        for fn in (lif_multistep_autograd, lif_multistep):
                            xi = x.clone().requires_grad_(True)
                            s = fn(xi, *args)
                            s.backward(g)
                            results.append((s, xi.grad))
                        (s_ref, g_ref), (s_new, g_new) = results
                        where = f"{surrogate}({alpha}) v_reset={v_reset} detach={detach_reset} decay={decay_input}"
                        assert torch.equal(s_ref, s_new), where
                        assert 0 < s_new.mean() < 1, where  # some spikes, some silence: the reset paths are used
                        assert torch.equal(g_ref, g_new), f"{where} {dtype}: max diff {(g_ref - g_new).abs().max()}"
                        checked += 1
    assert checked == 4 * 3 * 2 * 2 * 2


def test_fused_lif_without_grad_and_rejects_unknown_surrogate() -> None:
    x = torch.rand(3, 4) * 2
    with torch.no_grad():
        assert torch.equal(lif_multistep(x), lif_multistep_autograd(x))
    with pytest.raises(ValueError, match="surrogate"):
        lif_multistep(x, surrogate="relu")
    # the output is not saved for backward: changing it in place is allowed, as with the step-by-step form
    xi = (torch.rand(3, 4) * 2).requires_grad_(True)
    s = lif_multistep(xi)
    s.mul_(2)
    s.sum().backward()
    ref = xi.detach().clone().requires_grad_(True)
    (lif_multistep_autograd(ref) * 2).sum().backward()
    assert torch.equal(xi.grad, ref.grad)


def test_lif_module_is_stateless_across_calls_and_batch_sizes() -> None:
    torch.manual_seed(0)
    lif = LIF(NeuronConfig())
    a = torch.rand(4, 3, 5) * 2
    b = torch.rand(4, 7, 5) * 2
    first = lif(a)
    lif(b)  # a different batch size in between
    assert torch.equal(lif(a), first)
    # each sample's spikes depend only on itself
    assert torch.equal(lif(a[:, :1]), first[:, :1])


def test_spiking_resnet_eval_is_per_sample_and_repeatable() -> None:
    torch.manual_seed(0)
    net = SpikingResNet(1, layout="tiny", T=2).eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        full = net(x)
        net(torch.rand(3, 1, 8, 8))
        again = net(x)
        part = net(x[:2])
    assert full.shape == (2, 6, net.feature_dim)
    assert torch.equal(full, again)
    assert torch.allclose(part, full[:, :2], atol=1e-6)
    assert set(torch.unique(full * 16).tolist()) <= set(range(17))  # pooled spikes of a 4x4 map: k/16


def test_resnet_layouts_and_width_multiplier() -> None:
    tiny = SpikingResNet(1, layout="tiny", T=4)
    half = SpikingResNet(1, layout="tiny", width_mult=0.5)
    assert tiny.feature_dim == 32 and half.feature_dim == 16
    cifar = SpikingResNet(3, layout="cifar", width_mult=0.125)
    assert cifar.feature_dim == 64 and len(cifar.blocks) == 3 + 3 + 2
    out = cifar(torch.rand(2, 3, 32, 32))
    assert out.shape == (4, 2, 64)
    full = SpikingResNet(3, layout="cifar")
    n_params = sum(p.numel() for p in full.parameters())
    assert 11_000_000 < n_params < 14_000_000  # the paper's ~12.5 M per extractor
    ann = SpikingResNet(1, layout="tiny", spiking=False)
    assert ann.T == 1 and not any(isinstance(m, LIF) for m in ann.modules())
    with pytest.raises(ValueError, match="layout"):
        SpikingResNet(1, layout="huge")


def test_gradients_reach_the_first_layer() -> None:
    torch.manual_seed(0)
    net = SpikingResNet(1, layout="tiny", T=2)
    net(torch.rand(8, 1, 8, 8) * 3).sum().backward()
    assert net.stem_conv.weight.grad is not None and net.stem_conv.weight.grad.abs().sum() > 0


def test_encoding_and_readout() -> None:
    x = torch.rand(3, 1, 2, 2)
    seq = direct_encode(x, 5)
    assert seq.shape == (5, 3, 1, 2, 2) and all(torch.equal(seq[t], x) for t in range(5))
    assert torch.allclose(time_average(torch.stack([x, 3 * x])), 2 * x)


def test_spike_rates_and_synaptic_operations() -> None:
    lin = nn.Linear(4, 3, bias=False)
    spikes = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])  # 3 of 8 inputs spike
    ops = count_ops(lin, lambda: lin(spikes), batch_size=2)
    assert ops.dense_macs == 12.0 and ops.macs == 0.0
    assert ops.sops == pytest.approx(12.0 * 3 / 8)
    real = count_ops(lin, lambda: lin(torch.rand(2, 4) + 0.1), batch_size=2)
    assert real.macs == 12.0 and real.sops == 0.0
    assert real.energy_uj == pytest.approx(12.0 * 4.6e-6)

    lif = nn.Sequential(LIF(NeuronConfig()))
    with record_spikes(lif) as neurons:
        out = lif(_seq(0.6, 0.6, 0.6, 1.5).float())
    assert spike_rates(neurons) == {"0": pytest.approx(float(out.mean()))} and float(out.mean()) == 0.5
    assert not lif[0].recording


def test_bad_neuron_settings_are_named() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        spike(torch.zeros(1), surrogate="relu")
    with pytest.raises(ConfigError, match="surrogate"):
        build_config(NeuronConfig, {"surrogate": "relu"})
    with pytest.raises((ConfigError, ValueError), match="tau"):
        build_config(NeuronConfig, {"tau": 0.5})
