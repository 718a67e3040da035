"""Forward+backward time of the platform's LIF layer against spikingjelly 2.0's multi-step ``LIFNode`` on the same
input, as ratios measured in one run with interleaved repeats, plus a check that spikes and input gradients are
identical.

Timed side by side: the fused LIF (``lif_multistep``, one autograd function, what every run uses), the
step-by-step autograd form it replaced (``lif_multistep_autograd``), spikingjelly's ``LIFNode`` and, with
``--compile``, ``torch.compile`` of the step-by-step form (what ``NeuronConfig.compile`` turns on; the time of its
first call, the compile, is printed: minutes on a cold cache, so it is off by default here too).

Settings are the ALADE-SNN neuron: tau 2, ``decay_input=False``, threshold 1, hard reset to 0, no detached reset;
surrogates triangle (spikingjelly's ``PiecewiseQuadratic(alpha=1)``), sigmoid (alpha 4) and arctan (alpha 2).
spikingjelly is an optional dependency, kept out of the core ones (the ``bench`` extra:
``.venv/bin/pip install -c constraints.txt spikingjelly``); without it the script says so and times the
platform's neurons alone.

    .venv/bin/python bench/lif.py [--shape 4,64,32,8,8] [--repeats 30] [--threads 1] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from lifelong.adapters.nets.spiking import lif_multistep, lif_multistep_autograd

Fn = Callable[[torch.Tensor], torch.Tensor]


def _once(fn: Fn, x: torch.Tensor, g: torch.Tensor) -> float:
    xi = x.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    fn(xi).backward(g)
    return time.perf_counter() - t0


def _time_side_by_side(fns: dict[str, Fn], x: torch.Tensor, g: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one forward + backward of each function, the functions taking turns in every round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 2):
        for name, fn in fns.items():
            dt = _once(fn, x, g)
            if i >= 2:  # warm-up
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _grads(fn: Fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xi = x.detach().clone().requires_grad_(True)
    s = fn(xi)
    s.backward(g)
    return s.detach(), xi.grad.detach()


def _compare(name: str, ref: tuple[torch.Tensor, torch.Tensor], other: tuple[torch.Tensor, torch.Tensor]) -> str:
    spikes_same = torch.equal(ref[0], other[0])
    grads_same = torch.equal(ref[1], other[1])
    diff = (ref[1] - other[1]).abs().max().item()
    return (f"{name}: spikes {'identical' if spikes_same else 'DIFFER'}, input gradients "
            f"{'identical' if grads_same else f'differ (max |diff| {diff:.2e})'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="4,64,32,8,8", help="T,B,C,H,W of the input current")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the step-by-step form")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(shape) * 1.5 + 0.5
    g = torch.randn(shape)

    sj_version = None
    try:
        from importlib.metadata import version

        from spikingjelly.activation_based import neuron, surrogate

        sj_version = version("spikingjelly")
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        neuron = surrogate = None
        print(f"spikingjelly is NOT available ({type(exc).__name__}: {exc}); install the bench extra "
              f"(.venv/bin/pip install -c constraints.txt spikingjelly) for the comparison. Timing ours alone.")

    print(f"input {list(shape)} float32, {args.threads} thread(s), median of {args.repeats} interleaved rounds; "
          f"torch {torch.__version__}" + (f", spikingjelly {sj_version}" if sj_version else ""))
    settings = [("triangle", 1.0, "PiecewiseQuadratic(alpha=1)"), ("sigmoid", 4.0, "Sigmoid(alpha=4)"),
                ("arctan", 2.0, "ATan(alpha=2)")]
    rows = []
    checks = []
    for name, alpha, sj_name in settings:
        def fused(z: torch.Tensor, name: str = name, alpha: float = alpha) -> torch.Tensor:
            return lif_multistep(z, 2.0, 1.0, 0.0, False, False, name, alpha)

        def stepwise(z: torch.Tensor, name: str = name, alpha: float = alpha) -> torch.Tensor:
            return lif_multistep_autograd(z, 2.0, 1.0, 0.0, False, False, name, alpha)

        fns: dict[str, Fn] = {"fused": fused, "stepwise": stepwise}
        ref = _grads(stepwise, x, g)
        checks.append(_compare(f"{name}: fused vs step-by-step", ref, _grads(fused, x, g)))
        if neuron is not None:
            sg = {"triangle": surrogate.PiecewiseQuadratic(alpha=1.0), "sigmoid": surrogate.Sigmoid(alpha=4.0),
                  "arctan": surrogate.ATan(alpha=2.0)}[name]
            node = neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0, surrogate_function=sg,
                                  detach_reset=False, step_mode="m")

            def theirs(z: torch.Tensor, node=node) -> torch.Tensor:
                node.reset()
                return node(z)

            fns["spikingjelly"] = theirs
            checks.append(_compare(f"{name}: step-by-step vs spikingjelly {sj_name}", ref, _grads(theirs, x, g)))
        line: dict[str, float | str] = {"surrogate": name}
        if args.compile:
            compiled = torch.compile(stepwise, dynamic=False)
            t0 = time.perf_counter()
            got = _grads(compiled, x, g)
            line["compile_s"] = time.perf_counter() - t0
            checks.append(_compare(f"{name}: compiled vs step-by-step", ref, got))
            fns["compiled"] = compiled
        line.update({k: 1e3 * v for k, v in _time_side_by_side(fns, x, g, args.repeats).items()})
        rows.append(line)

    nan = float("nan")
    print(f"\n{'surrogate':<10}{'fused ms':>10}{'stepwise ms':>13}{'spikingjelly ms':>17}{'compiled ms':>13}"
          f"{'sj / fused':>12}{'sj / stepwise':>15}{'stepwise / fused':>18}{'compile s':>11}")
    for r in rows:
        sj, comp = r.get("spikingjelly", nan), r.get("compiled", nan)
        print(f"{r['surrogate']:<10}{r['fused']:>10.2f}{r['stepwise']:>13.2f}{sj:>17.2f}{comp:>13.2f}"
              f"{sj / r['fused']:>12.2f}{sj / r['stepwise']:>15.2f}{r['stepwise'] / r['fused']:>18.2f}"
              f"{r.get('compile_s', nan):>11.1f}")
    print()
    for c in checks:
        print(c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
