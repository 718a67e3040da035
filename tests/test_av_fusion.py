"""Audio-visual digits, the fusion extractors and the two balancing components (TAAF's loss, OGM-GE)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.adapters.nets.fusion import FusionNet
from lifelong.adapters.nets.spiking import NeuronConfig
from lifelong.incremental.learner import RunContext, TrainingState
from lifelong.platform.config import build_config
from lifelong.platform.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread_module")
HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


class _Model(torch.nn.Module):
    def __init__(self, fusion: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = FusionNet(fusion, 1, 6, 4, width=8, neuron=NeuronConfig())
        self.classifier = torch.nn.Linear(self.net.feature_dim, 3, bias=False)

    def forward(self, img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.net((img, aud))).mean(0)


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), (torch.rand(4, n, 6, generator=g) < 0.4).float(), torch.arange(n) % 3


@pytest.mark.parametrize("fusion,width", [("taaf", 8), ("av-sum", 8), ("av-concat", 16)])
def test_fusions_give_per_step_features_and_unimodal_logits(fusion: str, width: int) -> None:
    model = _Model(fusion)
    img, aud, _ = _batch()
    feats = model.net((img, aud))
    assert feats.shape == (4, 6, width) and model.net.feature_dim == width
    attention = model.net.last["attention"]
    if fusion == "taaf":
        assert attention.shape == (4, 6, 2) and torch.allclose(attention.sum(-1), torch.ones(4, 6))
        a = attention[..., :1]
        f = model.net.last["features"]
        assert torch.allclose(feats, a * f["image"] + (1 - a) * f["audio"], atol=1e-6)
    else:
        assert attention is None
    uni = model.net.unimodal_logits(model.classifier.weight)
    assert set(uni) == {"image", "audio"} and all(v.shape == (4, 6, 3) for v in uni.values())
    import copy

    assert copy.deepcopy(model).net.last == {}  # a copy drops the last forward's graph


def _state(model: _Model, y: torch.Tensor) -> TrainingState:
    return TrainingState(model=model, optimizer=None, y=y)


def test_taaf_loss_and_attention_modulation_by_hand() -> None:
    from lifelong.components.taaf import BalanceConfig, TemporalBalance

    model = _Model("taaf")
    img, aud, y = _batch()
    comp = TemporalBalance(BalanceConfig(alpha=0.5, weight=1.0), RunContext(stream=None, device=torch.device("cpu")))
    logits = model(img, aud)
    extra = comp.extra_loss(_state(model, y))
    a = model.net.last["attention"].detach()
    uni = model.net.unimodal_logits(model.classifier.weight)
    expected = sum(((1 - a[..., i]) * torch.nn.functional.cross_entropy(uni[m].reshape(24, 3), y.repeat(4),
                                                                       reduction="none").view(4, 6)).mean()
                   for i, m in enumerate(("image", "audio")))
    assert torch.allclose(extra, expected)
    (torch.nn.functional.cross_entropy(logits, y) + extra).backward()
    share = a.mean(dim=(0, 1))
    dominant = ("image", "audio")[int(share.argmax())]
    k = 1 - np.tanh(0.5 * (2 * float(share.max()) - 1))
    params = model.net.modality_parameters()
    before = {m: [p.grad.clone() for p in params[m] if p.grad is not None] for m in params}
    comp.after_backward(_state(model, y))
    for m in params:
        after = [p.grad for p in params[m] if p.grad is not None]
        factor = k if m == dominant else 1.0
        assert all(torch.allclose(g1, g0 * factor, atol=1e-7) for g0, g1 in zip(before[m], after))
    assert comp.summary()[f"mean_coefficient_{dominant}"] == pytest.approx(k)


def test_ogm_ge_slows_the_more_confident_modality_and_taaf_needs_attention() -> None:
    from lifelong.components.ogm_ge import GradientModulation
    from lifelong.components.taaf import BalanceConfig, TemporalBalance

    model = _Model("av-concat")
    img, aud, y = _batch()
    with torch.no_grad():  # the image half of the classifier reads the labels, the audio half is zero
        model.classifier.weight[:, 8:] = 0
    comp = GradientModulation(BalanceConfig(alpha=0.4, noise=False), RunContext(stream=None, device=torch.device("cpu")))
    loss = torch.nn.functional.cross_entropy(model(img, aud), y)
    assert comp.extra_loss(_state(model, y)) is None
    loss.backward()
    with torch.no_grad():
        uni = model.net.unimodal_logits(model.classifier.weight)
        score = {m: float(torch.softmax(v.mean(0), 1).gather(1, y[:, None]).sum()) for m, v in uni.items()}
    strong = max(score, key=score.get)
    ratio = score[strong] / min(score.values())
    comp.after_backward(_state(model, y))
    assert comp.summary()[f"mean_coefficient_{strong}"] == pytest.approx(1 - np.tanh(0.4 * (ratio - 1)))
    assert comp.summary()[f"mean_coefficient_{({'image', 'audio'} - {strong}).pop()}"] == 1.0
    with pytest.raises(UserError, match="model=taaf"):
        TemporalBalance(BalanceConfig(), RunContext(stream=None, device=torch.device("cpu"))).extra_loss(_state(model, y))


def _av_stream() -> object:
    """Three classes: an image with a bright row per class and a tone per class (0.25 s)."""
    from lifelong.incremental.streams import build_class_incremental_stream

    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.repeat(np.arange(3), n)
        img = rng.uniform(0, 0.3, (len(y), 8, 8))
        img[np.arange(len(y)), 2 * y + 1, :] = 1.0
        wav = [np.sin(2 * np.pi * 400 * (c + 1) * t) * rng.uniform(0.3, 1) for c in y]
        x = np.concatenate([img.reshape(len(y), 64), np.stack(wav)], axis=1)
        return torch.tensor(x, dtype=torch.float32), torch.from_numpy(y)

    (xtr, ytr), (xte, yte) = make(8), make(4)
    return build_class_incremental_stream("av", train_data=(xtr, ytr), train_targets=ytr.tolist(), test_data=(xte, yte),
                                          test_targets=yte.tolist(), class_order=[0, 1, 2], counts=[2, 1],
                                          input_shape=(4064,), info={"modality": "audio-visual", "sample_rate": 16000,
                                                                     "image_shape": [1, 8, 8], "audio_samples": 4000})


def test_alade_snn_trains_the_taaf_model_with_its_loss() -> None:
    from lifelong.strategies.alade_snn import AladeSNNConfig, AladeSNNLearner

    stream = _av_stream()
    cfg = build_config(AladeSNNConfig, {"model": "taaf", "components": ["taaf"], "encoder": "rate",
                                        "encoder_config": {"spikes_per_second": 300, "steps": 4}, "epochs": 3,
                                        "finetune_epochs": 2, "lr_milestones": [], "mem_size": 6, "batch_size": 6})
    learner = AladeSNNLearner(cfg, RunContext(stream=stream, device=torch.device("cpu"), seed=0))
    assert learner.input_shape == (1, 8, 8, 32, 4)
    for exp in stream.train_stream:
        learner.train_experience(exp)
    x = torch.stack([s[0] for s in stream.test_stream[1].dataset])
    assert learner.predict(x).shape == (len(x), 3)
    summary = learner.summary()
    assert summary["components"]["taaf"]["mean_coefficient_image"] is not None or \
        summary["components"]["taaf"]["mean_coefficient_audio"] is not None
    assert summary["ops"]["sops_per_sample"] > 0
    with pytest.raises(UserError, match="audio-visual"):
        AladeSNNLearner(build_config(AladeSNNConfig, {"model": "tcn-audio"}),
                        RunContext(stream=stream, device=torch.device("cpu")))


@pytest.mark.skipif(not HAVE_TOOLS, reason="espeak-ng and sox are not installed (make data)")
def test_split_av_digits_pairs_classes_and_applies_the_dials(tmp_path: Path) -> None:
    import lifelong
    from lifelong.benchmarks.av_digits import _images

    tiny = dict(cache_dir=str(tmp_path), train_per_class=2, test_per_class=1, n_experiences=2, accents=["en-us"],
                speeds=[160], pitches=[50], augmentations=["none"], shuffle_classes=False)
    clean = lifelong.create("benchmark", "split-av-digits", **tiny)
    shifted = lifelong.create("benchmark", "split-av-digits", onset_shift_ms=200, image_noise=0.3, **tiny)
    assert clean.input_shape == (64 + 16000,) and clean.info["modality"] == "audio-visual"
    xc = torch.stack([s[0] for s in clean.train_stream[0].dataset])
    xs = torch.stack([s[0] for s in shifted.train_stream[0].dataset])
    y = [int(s[1]) for s in clean.train_stream[0].dataset]
    assert y == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert np.allclose(xc[:, :64].numpy(), _images("train", 2, 0)[:10])  # the images of the same classes
    assert not torch.equal(xc[:, :64], xs[:, :64])
    delays = [int(np.flatnonzero(np.abs(s.numpy()) > 0)[0]) - int(np.flatnonzero(np.abs(c.numpy()) > 0)[0])
              for c, s in zip(xc[:, 64:], xs[:, 64:])]
    assert all(0 <= d <= 3200 for d in delays) and any(d > 0 for d in delays)
    again = lifelong.create("benchmark", "split-av-digits", onset_shift_ms=200, image_noise=0.3, **tiny)
    assert torch.equal(xs, torch.stack([s[0] for s in again.train_stream[0].dataset]))
