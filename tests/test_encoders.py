"""Spike encoders on signals whose spikes can be worked out by hand, the rate knob, the shared contract, and the
``encoder`` option of the spiking strategies on a small synthetic audio stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.encoders.base import SpikeEvents, erb_space
from lifelong.encoders.delta import DeltaConfig, DeltaEncoder
from lifelong.encoders.latency import LatencyConfig, LatencyEncoder
from lifelong.encoders.rate import RateConfig, RateEncoder
from lifelong.encoders.spiketrum import Spiketrum, SpiketrumConfig
from lifelong.platform import registry
from lifelong.platform.config import build_config

pytestmark = pytest.mark.usefixtures("one_thread_module")
FS = 16000


@pytest.fixture(scope="module")
def spiketrum() -> Spiketrum:
    return Spiketrum(build_config(SpiketrumConfig, {"spikes_per_second": 400, "channels": 16}))


def _atom(enc: Spiketrum, channel: int, start: int, value: float, n: int = 8000) -> np.ndarray:
    x = np.zeros(n)
    k = enc.kernels[channel]
    x[start:start + len(k)] += value * k
    return x


@pytest.mark.parametrize("channel,start,value", [(0, 100, 0.7), (7, 3000, -1.3), (15, 7900, 0.2)])
def test_one_gammatone_atom_is_one_spike_at_its_channel_and_time(spiketrum: Spiketrum, channel: int, start: int,
                                                                 value: float) -> None:
    x = _atom(spiketrum, channel, start, value)
    ev = spiketrum.events(x)
    assert len(ev) == 1  # the residual is zero after it: the pursuit stops
    assert (int(ev.channel[0]), int(ev.time[0])) == (channel, start)
    assert ev.value[0] == pytest.approx(value, rel=1e-5)
    rebuilt = spiketrum.decode(ev, x.size)
    keep = min(x.size, start + len(spiketrum.kernels[channel]))
    assert np.allclose(rebuilt[:keep], x[:keep], atol=1e-5)


def test_two_distant_atoms_come_back_strongest_first(spiketrum: Spiketrum) -> None:
    x = _atom(spiketrum, 3, 500, 0.4) + _atom(spiketrum, 12, 6000, -0.9)
    ev = spiketrum.events(x)
    assert len(ev) == 2
    assert list(zip(ev.channel.tolist(), ev.time.tolist())) == [(12, 6000), (3, 500)]


@settings(max_examples=8, deadline=None)
@given(rate=st.sampled_from([50, 200, 800, 2000]), seed=st.integers(0, 1000))
def test_the_rate_knob_of_spiketrum_is_met_within_2_percent(rate: int, seed: int) -> None:
    enc = Spiketrum(SpiketrumConfig(spikes_per_second=rate, channels=16, min_residual=0.0))
    x = np.random.default_rng(seed).standard_normal(4000)  # 0.25 s of noise never runs out of residual
    asked = rate * 0.25
    assert abs(len(enc.events(x)) - asked) <= 0.02 * asked + 0.5


def test_the_rate_knob_of_the_baselines(spiketrum: Spiketrum) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(FS) / FS
    x = np.sin(2 * np.pi * 440 * t) * (0.2 + np.abs(np.sin(2 * np.pi * 3 * t))) + 0.05 * rng.standard_normal(FS)
    for enc, rate in ((DeltaEncoder(DeltaConfig(spikes_per_second=600)), 600),
                      (LatencyEncoder(LatencyConfig(spikes_per_second=600)), 600)):
        assert abs(len(enc.events(x)) - rate) <= 0.02 * rate, type(enc).__name__
    # Poisson: the count varies by about its square root around the budget
    counts = [len(RateEncoder(RateConfig(spikes_per_second=2000, seed=s)).events(x)) for s in range(4)]
    assert abs(np.mean(counts) - 2000) < 3 * np.sqrt(2000 / 4)
    # latency gives at most one spike per channel and window: 32 channels x 40 windows a second
    assert len(LatencyEncoder(LatencyConfig(spikes_per_second=5000)).events(x)) == 32 * 40


def test_latency_fires_the_tone_channel_first_and_delta_marks_the_onset() -> None:
    freqs = erb_space(100.0, 7000.0, 32)
    t = np.arange(FS) / FS
    tone = np.sin(2 * np.pi * freqs[20] * t) * (t >= 0.5)  # silence, then a tone at channel 20's centre
    lat = LatencyEncoder(LatencyConfig(spikes_per_second=40))
    ev = lat.events(tone)
    first = np.argmin(ev.time)
    assert ev.channel[first] == 20 and ev.time.min() >= 8000 - lat.window
    delta = DeltaEncoder(DeltaConfig(spikes_per_second=20))
    ev = delta.events(tone)
    on = ev.value > 0
    assert on.any() and 20 in ev.channel[on].tolist()
    assert ev.time[on].min() >= 8000 - 2 * delta.frame  # nothing changes before the onset


def test_encode_bins_events_memoises_and_is_deterministic() -> None:
    enc = RateEncoder(RateConfig(spikes_per_second=300, steps=10))
    waves = torch.randn(3, 1, 4000)
    a = enc.encode(waves)
    assert a.shape == (10, 3, 32) and a.dtype == torch.float32
    assert torch.equal(a, RateEncoder(RateConfig(spikes_per_second=300, steps=10)).encode(waves))
    assert len(enc._cache) == 3
    assert torch.equal(enc.encode(waves[1:2]), a[:, 1:2])
    ev = SpikeEvents(np.array([0, 1, 1]), np.array([0, 3999, 400]), np.array([1.0, -2.0, 3.0], np.float32))
    two = Spiketrum(SpiketrumConfig(channels=2, steps=10))
    counts = two.bin(ev, 4000)
    assert counts.shape == (10, 4) and counts.sum() == 3
    assert counts[0, 0] == 1 and counts[9, 3] == 1 and counts[1, 2] == 1  # negative value -> second line


def test_every_encoder_is_listed_and_bad_options_are_refused(cli) -> None:
    assert {s.name for s in registry.list_plugins("encoder")} >= {"spiketrum", "rate", "latency", "delta"}
    result = cli("plugins", "list", "--kind", "encoder")
    assert result.code == 0 and all(n in result.stdout for n in ("spiketrum", "rate", "latency", "delta"))
    with pytest.raises(ValueError, match="fmax"):
        registry.create("encoder", "spiketrum", fmax=9000)


# ------------------------------------------------------------------------------------------ strategies on sound
def _tone_stream() -> object:
    """Four classes of 0.25 s tones at different pitches, random onset and level: an audio stream."""
    from lifelong.incremental.streams import build_class_incremental_stream

    rng = np.random.default_rng(0)
    t = np.arange(4000) / FS

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.repeat(np.arange(4), n)
        x = [rng.uniform(0.3, 1) * np.sin(2 * np.pi * (300 * 2 ** c) * t) * (t > rng.uniform(0, 0.1)) for c in y]
        return torch.tensor(np.stack(x), dtype=torch.float32).unsqueeze(1), torch.from_numpy(y)

    (xtr, ytr), (xte, yte) = make(12), make(6)
    return build_class_incremental_stream("tones", train_data=(xtr, ytr), train_targets=ytr.tolist(),
                                          test_data=(xte, yte), test_targets=yte.tolist(), class_order=[0, 1, 2, 3],
                                          counts=[2, 2], input_shape=(1, 4000), info={"modality": "audio",
                                                                                     "sample_rate": FS})


@pytest.mark.parametrize("encoder", ["spiketrum", "delta"])
def test_alade_snn_learns_tones_through_an_encoder(encoder: str) -> None:
    from lifelong.incremental.learner import RunContext
    from lifelong.strategies.alade_snn import AladeSNNConfig, AladeSNNLearner

    stream = _tone_stream()
    cfg = build_config(AladeSNNConfig, {"encoder": encoder, "encoder_config": {"spikes_per_second": 400, "steps": 8},
                                        "epochs": 6, "finetune_epochs": 4, "lr_milestones": [], "mem_size": 16,
                                        "batch_size": 8})
    torch.manual_seed(0)
    learner = AladeSNNLearner(cfg, RunContext(stream=stream, device=torch.device("cpu"), seed=0))
    assert learner.input_shape == (64, 8)
    for exp in stream.train_stream:
        learner.train_experience(exp)
    pairs = [s[:2] for s in stream.test_stream[0].dataset]
    x, y = torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])
    acc = float((learner.predict(x).argmax(1) == y).float().mean())
    assert acc > 0.5  # 2 of 4 classes in this experience: chance is 0.25 over all logits
    assert learner.summary()["T"] == cfg.T and "ops" in learner.summary()


def test_encoders_refuse_images_and_sound_refuses_direct_coding(cli, tmp_path: Path) -> None:
    result = cli("run", "--strategy", "alade-snn", "--benchmark", "split-digits", "--set", "encoder=spiketrum",
                 "--out", str(tmp_path / "a"))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "keep direct coding" in result.stderr and not (tmp_path / "a").exists()
    result = cli("run", "--strategy", "der", "--benchmark", "split-digits", "--set", "encoder=mel",
                 "--out", str(tmp_path / "b"))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "spiketrum" in result.stderr and not (tmp_path / "b").exists()
    from lifelong.incremental.learner import RunContext
    from lifelong.platform.errors import UserError
    from lifelong.strategies.der import DERConfig, DERLearner

    with pytest.raises(UserError, match="needs a spike encoder"):
        DERLearner(build_config(DERConfig, {"encoder": "direct"}),
                   RunContext(stream=_tone_stream(), device=torch.device("cpu")))
