"""Where the training time of a spiking network goes, against its ReLU twin: one training step (forward, loss,
backward) of the Fashion-MNIST extractor (``SpikingResNet`` layout ``mnist``) timed side by side, interleaved, in
one process, for four networks:

- ``relu T=1``: the ReLU twin (``spiking=False``), what ``alade-snn neuron=relu`` and ``der`` train;
- ``relu T=T``: the same ReLU network fed T direct-encoded copies (convolutions and batch norm over ``T*B``):
  what the time steps alone cost, with no neuron at all;
- ``spiking T=T``: the LIF network (what ``alade-snn`` trains);
- ``spiking T=T, LIF->ReLU``: the spiking network with each LIF swapped for a ReLU (a check on ``relu T=T``).

The ratios split ``spiking / relu T=1`` into ``relu T=T / relu T=1`` (the time steps: convolutions, batch norm and
memory traffic over T times the batch) and ``spiking / relu T=T`` (the neuron's own elementwise work). A
``torch.profiler`` table per network then says which operators carry the time (convolution, batch norm, the LIF,
the rest: the neuron's work is elementwise and lands there). Single-threaded by default, as the comparisons run.

    .venv/bin/python bench/spiking_profile.py [--T 4] [--batch 64] [--repeats 21] [--threads 1] [--no-profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
from torch import nn

from lifelong.adapters.nets.spiking import LIF, SeqReLU, SpikingResNet

Step = Callable[[], None]


def _network(spiking: bool, T: int, lif_to_relu: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = SpikingResNet(1, layout="mnist", T=T, spiking=spiking)
    if not spiking:
        net.T = T  # the ReLU network fed T copies: the time steps' cost without a neuron
    if lif_to_relu:
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, LIF):
                    setattr(module, name, SeqReLU())
    return net


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    head = nn.Linear(net.feature_dim, 10)
    params = [*net.parameters(), *head.parameters()]

    def run() -> None:
        for p in params:
            p.grad = None
        nn.functional.cross_entropy(head(net(x).mean(0)), y).backward()

    return run


def _categories(step: Step, calls: int) -> dict[str, float]:
    """Self CPU milliseconds per step by operator family."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    out = {"convolution": 0.0, "batch norm": 0.0, "elementwise and the rest (the LIF's arithmetic)": 0.0}
    for ev in prof.key_averages():
        name = ev.key.lower()
        ms = ev.self_cpu_time_total / 1000.0 / calls
        if "convolution" in name or "mkldnn_conv" in name:
            out["convolution"] += ms
        elif "batch_norm" in name:
            out["batch norm"] += ms
        else:
            out["elementwise and the rest (the LIF's arithmetic)"] += ms
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    T = args.T
    steps = {
        "relu T=1": _step(_network(False, 1), x, y),
        f"relu T={T}": _step(_network(False, T), x, y),
        f"spiking T={T}": _step(_network(True, T), x, y),
        f"spiking T={T}, LIF->ReLU": _step(_network(True, T, lif_to_relu=True), x, y),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():
        for _ in range(3):
            step()  # warm-up
    for _ in range(args.repeats):  # interleaved: a load change hits every network alike
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1000.0 for k, v in times.items()}
    print(f"one training step, layout mnist, batch {args.batch}, T={T}, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats, load {os.getloadavg()[0]:.2f}; median ms")
    for name, ms in med.items():
        print(f"  {name:<26} {ms:8.1f}")
    base, steps_only, spk = med["relu T=1"], med[f"relu T={T}"], med[f"spiking T={T}"]
    print(f"spiking / relu T=1 = {spk / base:.2f} = (relu T={T} / relu T=1 = {steps_only / base:.2f}: the time steps)"
          f" x (spiking / relu T={T} = {spk / steps_only:.2f}: the neuron)")
    if not args.no_profile:
        print("self CPU ms per step by operator family (torch.profiler, 5 steps)")
        for name in ("relu T=1", f"relu T={T}", f"spiking T={T}"):
            cats = _categories(steps[name], 5)
            print(f"  {name:<14} " + "  ".join(f"{k} {v:6.1f}" for k, v in cats.items()))


if __name__ == "__main__":
    main()
