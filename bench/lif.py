"""Forward+backward time of the platform's LIF layer (eager and ``torch.compile``) against spikingjelly 2.0's
multi-step ``LIFNode`` on the same input, as ratios measured in one run, plus a check that spikes and input
gradients are identical.

Settings are the ALADE-SNN neuron: tau 2, ``decay_input=False``, threshold 1, hard reset to 0, no detached reset;
surrogates triangle (spikingjelly's ``PiecewiseQuadratic(alpha=1)``), sigmoid (alpha 4) and arctan (alpha 2).
spikingjelly is an optional dependency (the ``bench`` extra: ``pip install -c constraints.txt spikingjelly``);
without it the script says so and times the platform's neuron alone.

    .venv/bin/python bench/lif.py [--shape 4,64,32,8,8] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from lifelong.adapters.spiking import lif_multistep


def _time(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward."""
    times = []
    for i in range(repeats + 2):
        xi = x.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        fn(xi).backward(g)
        dt = time.perf_counter() - t0
        if i >= 2:  # warm-up
            times.append(dt)
    return statistics.median(times)


def _grads(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-compile", action="store_true")
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

    print(f"input {list(shape)} float32, {args.threads} thread(s), median of {args.repeats}; torch {torch.__version__}"
          + (f", spikingjelly {sj_version}" if sj_version else ""))
    settings = [("triangle", 1.0, "PiecewiseQuadratic(alpha=1)"), ("sigmoid", 4.0, "Sigmoid(alpha=4)"), ("arctan", 2.0, "ATan(alpha=2)")]
    rows = []
    for name, alpha, sj_name in settings:
        def ours(z: torch.Tensor, name: str = name, alpha: float = alpha) -> torch.Tensor:
            return lif_multistep(z, 2.0, 1.0, 0.0, False, False, name, alpha)

        t_ours = _time(ours, x, g, args.repeats)
        line = {"surrogate": name, "ours_eager_ms": 1e3 * t_ours}
        ref = _grads(ours, x, g)
        if neuron is not None:
            sg = {"triangle": surrogate.PiecewiseQuadratic(alpha=1.0), "sigmoid": surrogate.Sigmoid(alpha=4.0),
                  "arctan": surrogate.ATan(alpha=2.0)}[name]
            node = neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0, surrogate_function=sg,
                                  detach_reset=False, step_mode="m")

            def theirs(z: torch.Tensor, node=node) -> torch.Tensor:
                node.reset()
                return node(z)

            line["spikingjelly_ms"] = 1e3 * _time(theirs, x, g, args.repeats)
            line["check"] = _compare(f"ours vs spikingjelly {sj_name}", ref, _grads(theirs, x, g))
        if not args.no_compile:
            compiled = torch.compile(ours, dynamic=False)
            t0 = time.perf_counter()
            _grads(compiled, x, g)
            line["compile_s"] = time.perf_counter() - t0
            line["ours_compiled_ms"] = 1e3 * _time(compiled, x, g, args.repeats)
            line["check_compiled"] = _compare("compiled vs eager", ref, _grads(compiled, x, g))
        rows.append(line)

    print(f"\n{'surrogate':<10}{'ours eager ms':>15}{'compiled ms':>13}{'spikingjelly ms':>17}"
          f"{'sj / ours':>11}{'sj / compiled':>15}{'eager / compiled':>18}")
    for r in rows:
        sj = r.get("spikingjelly_ms")
        comp = r.get("ours_compiled_ms")
        print(f"{r['surrogate']:<10}{r['ours_eager_ms']:>15.2f}{(comp or float('nan')):>13.2f}{(sj or float('nan')):>17.2f}"
              f"{(sj / r['ours_eager_ms'] if sj else float('nan')):>11.2f}"
              f"{(sj / comp if sj and comp else float('nan')):>15.2f}"
              f"{(r['ours_eager_ms'] / comp if comp else float('nan')):>18.2f}")
    print()
    for r in rows:
        for key in ("check", "check_compiled"):
            if key in r:
                print(r[key])
        if "compile_s" in r:
            print(f"{r['surrogate']}: torch.compile took {r['compile_s']:.1f} s once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
