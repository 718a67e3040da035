"""Spiketrum's claims measured against the rate, latency and send-on-delta baselines on spoken digits (a stand-in
for the paper's auditory data: espeak-ng renders, ``split-spoken-digits``).

Sections (``--sections``, default all), each over ``--seeds`` (3) with mean and a 95 % t-interval over seeds:

- ``info``: reconstruction SI-SNR (dB, scale-invariant, so the baselines' unknown overall level does not count)
  and spectral distance (dB: RMS difference of the two 32-channel log cochleagrams, 10 ms frames, each normalised
  to unit energy, floor -60 dB) against spikes per second, and the rate got / asked; a seed draws ``--n-info``
  test utterances;
- ``robust``: at ``--rate`` spikes/s, SI-SNR and spectral distance after deleting p % of the spikes and after
  jittering spike times (Gaussian, sigma in ms), and the accuracy of the ``accuracy`` section's networks on the
  same perturbed test spikes;
- ``accuracy``: one spiking network (``tcn-audio``: two temporal-convolution LIF layers, a linear readout per step,
  averaged over time), trained jointly on all ten digits from each encoder's spikes at the same budget
  (``--rate``), seeds varying the initialisation and batch order; test voices unseen in training;
- ``cil``: class-incremental ``alade-snn`` on ``split-spoken-digits`` (5 experiences of 2 digits) with each encoder
  at ``--rate``, seeds 0.. (the seed fixes the class order, the renders drawn and the initialisation).

Usage: ``python bench/spike_encoders.py --out runs/bench-encoders`` (writes ``results.json`` and prints the tables).
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

ENCODERS = ("spiketrum", "rate", "latency", "delta")


def si_snr(x: np.ndarray, y: np.ndarray) -> float:
    """Scale-invariant SNR of the rebuild ``y`` of ``x`` in dB."""
    gain = float(np.dot(x, y) / max(np.dot(y, y), 1e-20))
    err = x - gain * y
    return float(10 * np.log10(np.dot(x, x) / max(np.dot(err, err), 1e-20)))


def spectral_distance(x: np.ndarray, y: np.ndarray, freqs: np.ndarray, fs: int) -> float:
    """RMS difference in dB of the unit-energy log cochleagrams of ``x`` and ``y`` (floor -60 dB)."""
    from lifelong.encoders.base import gammatone_bank

    def logcg(z: np.ndarray) -> np.ndarray:
        bank = gammatone_bank(freqs, fs, z) ** 2
        frame = fs // 100
        n = bank.shape[1] // frame
        e = bank[:, : n * frame].reshape(len(freqs), n, frame).mean(axis=2)
        e = e / max(e.sum(), 1e-20)
        return 10 * np.log10(np.maximum(e, 1e-6 * e.max()))

    return float(np.sqrt(np.mean((logcg(x) - logcg(y)) ** 2)))


def perturb(ev: Any, rng: np.random.Generator, delete: float = 0.0, jitter_ms: float = 0.0, fs: int = 16000,
            samples: int = 16000) -> Any:
    """The events with ``delete`` of them removed at random and spike times moved by N(0, jitter)."""
    from lifelong.encoders.base import SpikeEvents

    keep = rng.random(len(ev)) >= delete
    out = ev.subset(keep)
    if jitter_ms > 0 and len(out):
        shift = np.round(rng.normal(0, jitter_ms * fs / 1000, len(out))).astype(np.int64)
        out = SpikeEvents(out.channel, np.clip(out.time + shift, 0, samples - 1), out.value)
    return out


def load_digits(seed: int, train: int, test: int) -> Any:
    import lifelong

    return lifelong.create("benchmark", "split-spoken-digits", seed=seed, train_per_class=train, test_per_class=test,
                           n_experiences=5, shuffle_classes=False)


def arrays(stream: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    experiences = stream.train_stream if split == "train" else stream.test_stream
    xs, ys = [], []
    for exp in experiences:
        for item in exp.dataset:
            xs.append(np.asarray(item[0]).reshape(-1))
            ys.append(int(item[1]))
    return np.stack(xs), np.asarray(ys)


def section_info(args: argparse.Namespace, x_test: np.ndarray) -> dict[str, Any]:
    from lifelong.platform import registry

    out: dict[str, Any] = {}
    for name in ENCODERS:
        for rate in args.rates:
            enc = registry.create("encoder", name, spikes_per_second=rate)
            per_seed = {"si_snr": [], "spectral_distance": [], "rate_ratio": [], "seconds_per_utterance": []}
            for seed in range(args.seeds):
                pick = np.random.default_rng(seed).choice(len(x_test), args.n_info, replace=False)
                snr, dist, ratio, t0 = [], [], [], time.time()
                for i in pick:
                    wave = x_test[i].astype(np.float64)
                    ev = enc.events(wave)
                    rec = enc.decode(ev, wave.size)
                    snr.append(si_snr(wave, rec))
                    dist.append(spectral_distance(wave, rec, enc.freqs, enc.config.sample_rate))
                    ratio.append(len(ev) / enc.budget(wave.size))
                per_seed["seconds_per_utterance"].append((time.time() - t0) / len(pick))
                per_seed["si_snr"].append(float(np.mean(snr)))
                per_seed["spectral_distance"].append(float(np.mean(dist)))
                per_seed["rate_ratio"].append(float(np.mean(ratio)))
            out[f"{name}@{rate}"] = per_seed
            print(f"info {name:9s} {rate:5d}/s  SI-SNR {fmt(per_seed['si_snr'])} dB  spectral distance "
                  f"{fmt(per_seed['spectral_distance'])} dB  got/asked {fmt(per_seed['rate_ratio'], 3)}", flush=True)
    return out


def encode_set(enc: Any, x: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Events and binned spike counts ``[N, T, lines]`` of every waveform."""
    events = [enc.events(w.astype(np.float64)) for w in x]
    return events, np.stack([enc.bin(ev, x.shape[1]) for ev in events])


def train_net(counts: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> Any:
    """The spiking network of the ``accuracy`` section trained on ``counts`` ``[N, T, lines]``."""
    import torch
    from torch import nn

    from lifelong.adapters.nets.spiking import NeuronConfig
    from lifelong.adapters.nets.spiking_audio import SpikingAudioNet

    torch.manual_seed(seed)
    net = SpikingAudioNet(counts.shape[2], neuron=NeuronConfig())
    head = nn.Linear(net.feature_dim, int(y.max()) + 1)
    model = nn.ModuleDict({"net": net, "head": head})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_t, y_t = torch.from_numpy(counts).float(), torch.from_numpy(y).long()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y_t), generator=gen).split(32):
            logits = head(net(x_t[idx].transpose(0, 1))).mean(0)
            loss = nn.functional.cross_entropy(logits, y_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy(model: Any, counts: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(counts).float().transpose(0, 1)
        pred = model["head"](model["net"](x)).mean(0).argmax(1).numpy()
    return float((pred == y).mean() * 100)


def section_accuracy_robust(args: argparse.Namespace, data: dict[str, np.ndarray], do_robust: bool) -> dict[str, Any]:
    from lifelong.platform import registry

    out: dict[str, Any] = {}
    deletions, jitters = (0.1, 0.3, 0.5), (0.1, 1.0, 5.0)
    for name in ENCODERS:
        enc = registry.create("encoder", name, spikes_per_second=args.rate)
        t0 = time.time()
        _, c_train = encode_set(enc, data["x_train"])
        ev_test, c_test = encode_set(enc, data["x_test"])
        res: dict[str, Any] = {"encode_seconds": time.time() - t0, "accuracy": [],
                               **{f"acc_delete_{p}": [] for p in deletions}, **{f"acc_jitter_{j}": [] for j in jitters}}
        for seed in range(args.seeds):
            model = train_net(c_train, data["y_train"], seed, args.epochs)
            res["accuracy"].append(accuracy(model, c_test, data["y_test"]))
            if do_robust:
                rng = np.random.default_rng(100 + seed)
                for p in deletions:
                    bins = np.stack([enc.bin(perturb(ev, rng, delete=p), data["x_test"].shape[1]) for ev in ev_test])
                    res[f"acc_delete_{p}"].append(accuracy(model, bins, data["y_test"]))
                for j in jitters:
                    bins = np.stack([enc.bin(perturb(ev, rng, jitter_ms=j), data["x_test"].shape[1]) for ev in ev_test])
                    res[f"acc_jitter_{j}"].append(accuracy(model, bins, data["y_test"]))
        if do_robust:
            res.update(robust_rebuild(args, enc, ev_test, data["x_test"], deletions, jitters))
        out[name] = res
        print(f"accuracy {name:9s} @{args.rate}/s: {fmt(res['accuracy'])} %  (encoding {res['encode_seconds']:.0f} s)"
              + ("  " + "  ".join(f"{k} {fmt(v)}" for k, v in res.items() if k.startswith(("acc_", "snr_", "dist_")))
                 if do_robust else ""), flush=True)
    return out


def robust_rebuild(args: argparse.Namespace, enc: Any, events: list[Any], x: np.ndarray, deletions: tuple,
                   jitters: tuple) -> dict[str, list[float]]:
    """SI-SNR and spectral distance of the rebuild after deletion or jitter, per seed (``--n-info`` utterances)."""
    res: dict[str, list[float]] = {}
    settings = [("delete", 0.0)] + [("delete", p) for p in deletions] + [("jitter", j) for j in jitters]
    for seed in range(args.seeds):
        rng = np.random.default_rng(200 + seed)
        pick = rng.choice(len(events), min(args.n_info, len(events)), replace=False)
        for kind, amount in settings:
            snr, dist = [], []
            for i in pick:
                ev = perturb(events[i], rng, **({"delete": amount} if kind == "delete" else {"jitter_ms": amount}))
                rec = enc.decode(ev, x.shape[1])
                snr.append(si_snr(x[i].astype(np.float64), rec))
                dist.append(spectral_distance(x[i].astype(np.float64), rec, enc.freqs, enc.config.sample_rate))
            res.setdefault(f"snr_{kind}_{amount}", []).append(float(np.mean(snr)))
            res.setdefault(f"dist_{kind}_{amount}", []).append(float(np.mean(dist)))
    return res


def section_cil(args: argparse.Namespace) -> dict[str, Any]:
    from lifelong.incremental.run import resolve_config, run_experiment

    out: dict[str, Any] = {}
    for name in ENCODERS:
        rows = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            overrides = {"encoder": name, "encoder_config": {"spikes_per_second": args.rate},
                         "train_per_class": args.train, "test_per_class": args.test, "epochs": args.cil_epochs,
                         "finetune_epochs": args.cil_finetune, "lr_milestones": [], "finetune_milestones": [],
                         "alignment_start": 0}
            cfg = resolve_config(strategy="alade-snn", benchmark="split-spoken-digits", seed=seed, overrides=overrides)
            run_experiment(cfg, out=Path(args.out) / f"cil-{name}-{seed}", progress=False)
            results = json.loads((Path(args.out) / f"cil-{name}-{seed}" / "results.json").read_text())
            rows.append({k: results[k] for k in ("average_incremental_accuracy", "last_accuracy", "forgetting",
                                                 "wall_time_s")})
        out[name] = rows
        print(f"cil {name:9s} AIA {fmt([100 * r['average_incremental_accuracy'] for r in rows])}  last "
              f"{fmt([100 * r['last_accuracy'] for r in rows])}  forgetting "
              f"{fmt([100 * r['forgetting'] for r in rows])} (%)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-encoders")
    parser.add_argument("--sections", default="info,accuracy,robust,cil")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="the cil section's first seed (to add seeds later)")
    parser.add_argument("--rates", type=lambda s: [int(v) for v in s.split(",")], default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--rate", type=int, default=1000, help="the equal spike budget of accuracy, robust, cil")
    parser.add_argument("--n-info", type=int, default=20)
    parser.add_argument("--train", type=int, default=40, help="training renders per digit")
    parser.add_argument("--test", type=int, default=20, help="test renders per digit")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cil-epochs", type=int, default=6)
    parser.add_argument("--cil-finetune", type=int, default=10)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sections = set(args.sections.split(","))
    stream = load_digits(0, args.train, args.test)
    x_train, y_train = arrays(stream, "train")
    x_test, y_test = arrays(stream, "test")
    report: dict[str, Any] = {"args": vars(args), "n_train": len(y_train), "n_test": len(y_test),
                              "manifest_digest": stream.info["manifest_digest"]}
    print(f"split-spoken-digits (espeak-ng stand-in): {len(y_train)} training and {len(y_test)} test utterances, "
          f"disjoint voices", flush=True)
    if "info" in sections:
        report["info"] = section_info(args, x_test)
    if sections & {"accuracy", "robust"}:
        data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        report["accuracy"] = section_accuracy_robust(args, data, "robust" in sections)
    if "cil" in sections:
        report["cil"] = section_cil(args)
    path = Path(args.out) / f"results-{'-'.join(sorted(sections))}{'-from' + str(args.first_seed) if args.first_seed else ''}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
