"""TAAF's claims measured on ``split-av-digits`` (digit images paired with espeak-ng spoken digits: a stand-in for
CREMA-D and AVE), against the static fusions and OGM-GE on the same spiking encoders.

One network per method, trained jointly on the ten classes (the fusion claims are about learning two modalities
at once; ``lifelong run --set model=taaf --set components=[taaf]`` is the class-incremental use): the
``adapters/nets/fusion.py`` extractor with LIF neurons, a linear classifier at every step, logits averaged over
time, Adam (lr 3e-3), ``--epochs`` epochs, batches of 32. Methods: ``concat`` and ``sum`` (static fusions),
``ogm-ge`` (OGM-GE's modulation on the concatenation, ``components/ogm_ge.py``), ``attention`` (TAAF's fusion
without its loss) and ``taaf`` (fusion + the balanced loss and modulation). Audio spikes come from ``--encoder``
at ``--rate`` spikes/s, encoded once per waveform set; the onset shift is applied to the spike times (the same
as shifting the waveform, which ``split-av-digits``' ``onset_shift_ms`` does, but without encoding again).

Measured over ``--seeds`` (mean and 95 % t-interval):
- accuracy of each method at several imbalance settings (``clean``; ``image-weak``: image_noise 0.6;
  ``audio-weak``: audio_noise 2.0, i.e. -6 dB SNR);
- the weak modality's encoder: a linear probe (logistic regression on its time-averaged features, fitted on the
  training pairs) after joint training, per method;
- epochs for each modality to converge: per epoch, the accuracy of each modality's own logits (the classifier on
  its features alone) on the test pairs; the first epoch reaching 95 % of its best;
- accuracy against the audio onset shift (0, 100, 250 ms; the ``clean`` setting; concat and taaf);
- operations per sample of one forward (synaptic operations on spikes, MACs on real values; ``spiking.count_ops``).

Usage: ``python bench/taaf_fusion.py --out runs/bench-taaf`` (writes ``results.json``, prints the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cil_fashion import plus_minus as fmt  # noqa: E402  (the benches share one t-interval)

METHODS = ("concat", "sum", "ogm-ge", "attention", "taaf")
FUSION_OF = {"concat": "av-concat", "sum": "av-sum", "ogm-ge": "av-concat", "attention": "taaf", "taaf": "taaf"}
SETTINGS = {"clean": {}, "image-weak": {"image_noise": 0.6}, "audio-weak": {"audio_noise": 2.0}}


def load(setting: dict[str, float], args: argparse.Namespace, encoder: Any) -> dict[str, Any]:
    """Images, the audio events and labels of both splits for one imbalance setting."""
    import lifelong

    stream = lifelong.create("benchmark", "split-av-digits", seed=0, train_per_class=args.train,
                             test_per_class=args.test, shuffle_classes=False, **setting)
    data: dict[str, Any] = {}
    for split, experiences in (("train", stream.train_stream), ("test", stream.test_stream)):
        xs, ys = [], []
        for exp in experiences:
            for item in exp.dataset:
                xs.append(np.asarray(item[0]))
                ys.append(int(item[1]))
        x = np.stack(xs)
        data[split] = {"images": x[:, :64].reshape(-1, 1, 8, 8), "events": [events(encoder, w) for w in x[:, 64:]],
                       "y": np.asarray(ys), "samples": x.shape[1] - 64}
    return data


_EVENTS: dict[bytes, Any] = {}


def events(encoder: Any, wave: np.ndarray) -> Any:
    """The encoder's events of ``wave``, once per distinct waveform (the image-weak setting shares the clean audio)."""
    import hashlib

    key = hashlib.blake2b(np.ascontiguousarray(wave, np.float32).tobytes(), digest_size=16).digest()
    if key not in _EVENTS:
        _EVENTS[key] = encoder.events(wave.astype(np.float64))
    return _EVENTS[key]


def spikes(encoder: Any, split: dict[str, Any], shift_ms: float, seed: int) -> np.ndarray:
    """Binned audio spikes ``[N, T, lines]``, each train delayed by U(0, shift) (spikes past the end dropped)."""
    from lifelong.encoders.base import SpikeEvents

    rng = np.random.default_rng([seed, 5])
    n = split["samples"]
    out = []
    for ev in split["events"]:
        if shift_ms > 0:
            s = int(rng.integers(0, int(shift_ms * encoder.config.sample_rate / 1000) + 1))
            keep = ev.time + s < n
            ev = SpikeEvents(ev.channel[keep], ev.time[keep] + s, ev.value[keep])
        out.append(encoder.bin(ev, n))
    return np.stack(out)


class Model:
    """The fusion network and its per-step classifier, with the learner-like attributes the components read."""

    def __init__(self, method: str, lines: int, steps: int, seed: int) -> None:
        import torch
        from torch import nn

        from lifelong.adapters.nets.fusion import FusionNet
        from lifelong.adapters.nets.spiking import NeuronConfig

        torch.manual_seed(seed)
        self.net = FusionNet(FUSION_OF[method], 1, lines, steps, neuron=NeuronConfig())
        self.module = nn.Module()
        self.module.net = self.net
        self.module.classifier = nn.Linear(self.net.feature_dim, 10, bias=False)

    def logits(self, images: Any, audio: Any) -> Any:
        return self.module.classifier(self.net((images, audio)))


def train(method: str, data: dict[str, Any], audio: dict[str, np.ndarray], args: argparse.Namespace,
          seed: int) -> tuple[Model, list[dict[str, float]]]:
    """Train one method; per epoch, the test accuracy of the fused and of each modality's own logits."""
    import torch
    import torch.nn.functional as F

    from lifelong.components.ogm_ge import GradientModulation
    from lifelong.components.taaf import BalanceConfig, TemporalBalance
    from lifelong.incremental.learner import RunContext, TrainingState

    lines, steps = audio["train"].shape[2], audio["train"].shape[1]
    model = Model(method, lines, steps, seed)
    opt = torch.optim.Adam(model.module.parameters(), lr=3e-3)
    context = RunContext(stream=None, device=torch.device("cpu"), seed=seed)  # type: ignore[arg-type]
    component = {"taaf": TemporalBalance, "ogm-ge": GradientModulation}.get(method)
    comp = component(BalanceConfig(), context) if component else None
    state = TrainingState(model=model.module, optimizer=opt)
    x_img = torch.from_numpy(data["train"]["images"]).float()
    x_aud = torch.from_numpy(audio["train"]).float().transpose(0, 1)
    y = torch.from_numpy(data["train"]["y"]).long()
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(args.epochs):
        model.module.train()
        for idx in torch.randperm(len(y), generator=gen).split(32):
            logits = model.logits(x_img[idx], x_aud[:, idx])
            loss = F.cross_entropy(logits.mean(0), y[idx])
            state.y = y[idx]
            if comp is not None:
                extra = comp.extra_loss(state)
                loss = loss + (extra if extra is not None else 0.0)
            opt.zero_grad()
            loss.backward()
            if comp is not None:
                comp.after_backward(state)
            opt.step()
        recalibrate(model, x_img, x_aud)
        curve.append(evaluate(model, data["test"], audio["test"]))
    return model, curve


def recalibrate(model: Model, x_img: Any, x_aud: Any) -> None:
    """Batch-norm statistics as exact averages over the training pairs (as ``der``'s ``bn_recalibrate``: the
    running averages lag the weights, and a spiking branch can fall silent in eval mode without this)."""
    import torch
    from torch import nn

    norms = [m for m in model.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.module.train()
    with torch.no_grad():
        for i in range(0, len(x_img), 64):
            model.logits(x_img[i:i + 64], x_aud[:, i:i + 64])
    for m in norms:
        m.momentum = 0.1
    model.module.eval()


def evaluate(model: Model, split: dict[str, Any], audio: np.ndarray) -> dict[str, float]:
    """Test accuracy (%) of the fused logits and of each modality's own logits."""
    import torch

    model.module.eval()
    with torch.no_grad():
        logits = model.logits(torch.from_numpy(split["images"]).float(), torch.from_numpy(audio).float().transpose(0, 1))
        uni = model.net.unimodal_logits(model.module.classifier.weight)
    y = split["y"]
    out = {"fused": float((logits.mean(0).argmax(1).numpy() == y).mean() * 100)}
    for m, v in uni.items():
        out[m] = float((v.mean(0).argmax(1).numpy() == y).mean() * 100)
    return out


def probe(model: Model, data: dict[str, Any], audio: dict[str, np.ndarray]) -> dict[str, float]:
    """Linear-probe test accuracy (%) of each modality's time-averaged features."""
    import torch
    from sklearn.linear_model import LogisticRegression

    feats = {}
    model.module.eval()
    for split in ("train", "test"):
        with torch.no_grad():
            model.logits(torch.from_numpy(data[split]["images"]).float(),
                         torch.from_numpy(audio[split]).float().transpose(0, 1))
        feats[split] = {m: f.mean(0).numpy() for m, f in model.net.last["features"].items()}
    out = {}
    for m in ("image", "audio"):
        clf = LogisticRegression(max_iter=2000).fit(feats["train"][m], data["train"]["y"])
        out[m] = float(clf.score(feats["test"][m], data["test"]["y"]) * 100)
    return out


def converge_epoch(curve: list[dict[str, float]], key: str) -> int:
    best = max(c[key] for c in curve)
    return next(i + 1 for i, c in enumerate(curve) if c[key] >= 0.95 * best)


def ops(model: Model, data: dict[str, Any], audio: dict[str, np.ndarray]) -> dict[str, float]:
    import torch

    from lifelong.adapters.nets.spiking import count_ops

    model.module.eval()
    img = torch.from_numpy(data["test"]["images"][:64]).float()
    aud = torch.from_numpy(audio["test"][:64]).float().transpose(0, 1)
    return count_ops(model.module, lambda: model.logits(img, aud), len(img)).as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-taaf")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--encoder", default="spiketrum")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10, help="time steps of the spike trains (and of the image)")
    parser.add_argument("--shifts", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 100.0, 250.0])
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from lifelong.platform import registry

    encoder = registry.create("encoder", args.encoder, spikes_per_second=args.rate, steps=args.steps)
    report: dict[str, Any] = {"args": vars(args), "settings": SETTINGS, "results": {}}
    for setting, dials in SETTINGS.items():
        t0 = time.time()
        data = load(dials, args, encoder)
        print(f"{setting}: {len(data['train']['y'])} training and {len(data['test']['y'])} test pairs "
              f"(loaded and encoded in {time.time() - t0:.0f} s)", flush=True)
        shifts = args.shifts if setting == "clean" else [0.0]
        for shift in shifts:
            for method in METHODS if shift == 0 else ("concat", "taaf"):
                rows = []
                for seed in range(args.seeds):
                    audio = {s: spikes(encoder, data[s], shift, seed) for s in ("train", "test")}
                    model, curve = train(method, data, audio, args, seed)
                    rows.append({"final": curve[-1], "probe": probe(model, data, audio),
                                 "converge": {k: converge_epoch(curve, k) for k in ("fused", "image", "audio")},
                                 "ops": ops(model, data, audio) if seed == 0 else None, "curve": curve})
                key = f"{setting}|shift={shift:g}|{method}"
                report["results"][key] = rows
                print(f"{key:34s} acc {fmt([r['final']['fused'] for r in rows])}  probe image "
                      f"{fmt([r['probe']['image'] for r in rows])} audio {fmt([r['probe']['audio'] for r in rows])}  "
                      f"converge image {fmt([r['converge']['image'] for r in rows])} audio "
                      f"{fmt([r['converge']['audio'] for r in rows])}  SOPs {rows[0]['ops']['sops_per_sample']:.3g} "
                      f"MACs {rows[0]['ops']['macs_per_sample']:.3g}", flush=True)
                Path(args.out, "results.json").write_text(json.dumps(report, indent=1))
    print(f"written {Path(args.out, 'results.json')}")


if __name__ == "__main__":
    main()
