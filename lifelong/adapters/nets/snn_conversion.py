"""ANN-to-SNN conversion with error compensation (ECL), beside plain rate conversion.

Follows "Efficient ANN-SNN Conversion with Error Compensation Learning" (Liu, Shen, Ran, Xu, Xu, Xu, Pan; ICML
2025), which names three fixes, one per conversion error, without public code. What is taken, and what is
chosen here where the paper's text was not available (docs/snn-conversion.md measures each choice):

- **clipping error -> a learnable threshold clipping function.** ``ClipReLU``: ``y = clamp(x, 0, lambda)`` with
  one trainable ``lambda`` per layer (initial value 2.0, PACT's gradient: ``dy/dlambda = 1`` where ``x >
  lambda``). Chosen: with ``levels=L > 0`` the clipped value is also rounded to ``L`` steps of ``lambda / L``
  during training (the QCFS form ``lambda * clamp(floor(x L / lambda + 1/2) / L, 0, 1)`` with a straight-through
  gradient), so the ANN learns the quantisation an SNN of about ``L`` time steps will make. The backbones with
  this activation are ``cnn-28-clip`` and ``cnn-small-clip`` (``-clip4`` etc. set ``L``); they use 2x2 average
  pooling where their ReLU twins max-pool, because a max over spike trains is not the spike train of a max.
- **quantisation and unevenness error -> dual-threshold neurons.** Chosen rule (``DualThresholdIF``): an
  integrate-and-fire neuron with reset by subtraction and two thresholds, ``+theta`` and ``0``: it sends a
  positive spike (worth ``+theta``) when ``v >= theta`` and a negative spike (``-theta``) when ``v < 0`` *and* it
  has sent more positive than negative spikes so far; each spike moves ``v`` back by its value. So the net count
  never goes below zero or above ``t`` (the output stays in ``[0, theta]``, like the clip), and charge that
  arrived early and was later cancelled by negative input is taken back instead of staying in the output.
- **non-uniformity error -> optimised membrane initialisation.** Chosen: ``v(0) = 0.5 theta``; for a constant
  input it turns the IF neuron's floor into rounding to the nearest of ``theta / T`` steps (the expected
  error of a uniformly spread input is then zero, QCFS' result). With the thresholds at ``theta`` and ``0`` that
  puts the rest potential halfway between them. Real activations are not spread uniformly, and the best start
  depends on T and on the layers before, so the scheme ``ecl-opt`` also *optimises* it on data
  (``calibrate_v_init``): per layer and per T, the fraction of theta on a grid of eighths (0, 1/8, ..., 1)
  that brings the converted network's mean output at T closest (mean squared error) to the ANN's on a
  calibration batch of training images, one sweep of coordinate descent from 0.5 in layer order.
- **threshold.** ``theta`` of each neuron is the trained ``lambda`` of the ``ClipReLU`` it replaces (no
  data-based threshold balancing); batch norm is not folded, it runs as the affine map it is in eval mode.

Plain conversion (``PLAIN``) is the classic rate conversion on the same thresholds: IF neurons, reset by
subtraction, ``v(0) = 0``, positive spikes only.

The converted network is stepped in time: the neurons keep their potential between calls, every call of the
model is one time step with the same (analog, direct-encoded) input, and the outputs are averaged over steps.
Every other layer is stateless and, in eval mode, affine (convolution, batch norm, average pooling, linear), so
the mean output over T steps is the network applied to the neurons' mean rates.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from lifelong.adapters.nets.backbones import ClipReLU


# ---------------------------------------------------------------------------------------------------- neurons
@dataclass(frozen=True)
class Scheme:
    """How clip activations become neurons: initial potential (fraction of the threshold), negative spikes."""

    name: str
    v_init: float = 0.0
    dual: bool = False
    #: optimise each layer's initial potential per T on calibration data (``calibrate_v_init``), from ``v_init``
    calibrated: bool = False


PLAIN = Scheme("plain", v_init=0.0, dual=False)
ECL = Scheme("ecl", v_init=0.5, dual=True)
ECL_OPT = Scheme("ecl-opt", v_init=0.5, dual=True, calibrated=True)
#: the two fixes of ECL's neuron one at a time, for the ablation in the bench
INIT_ONLY = Scheme("init-only", v_init=0.5, dual=False)
DUAL_ONLY = Scheme("dual-only", v_init=0.0, dual=True)
SCHEMES: dict[str, Scheme] = {s.name: s for s in (PLAIN, ECL, ECL_OPT, INIT_ONLY, DUAL_ONLY)}
#: the initial potentials (fractions of theta) ``calibrate_v_init`` chooses from
CALIBRATION_GRID: tuple[float, ...] = tuple(i / 8 for i in range(9))


class DualThresholdIF(nn.Module):
    """Integrate-and-fire neuron that keeps its potential across calls (one call = one time step).

    Outputs ``theta`` (positive spike), ``-theta`` (negative spike, only with ``dual``) or 0. ``reset()`` puts it
    back to rest before the next input.
    """

    def __init__(self, threshold: float, v_init: float = 0.5, dual: bool = True) -> None:
        super().__init__()
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.threshold = float(threshold)
        self.v_init = float(v_init)
        self.dual = bool(dual)
        self.v: torch.Tensor | None = None
        self.count: torch.Tensor | None = None  # net spikes so far (positive minus negative)
        self.spikes = 0.0  # spikes sent (either sign) since the last reset_counters, for the spike rate
        self.neuron_steps = 0

    def reset(self) -> None:
        self.v = None
        self.count = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.threshold
        if self.v is None or self.v.shape != x.shape:
            self.v = torch.full_like(x, self.v_init * theta, dtype=torch.float32)
            self.count = torch.zeros_like(x, dtype=torch.float32)
        assert self.count is not None
        v = self.v + x.float()
        pos = (v >= theta).float()
        s = pos
        if self.dual:
            s = s - ((v < 0) & (self.count > 0)).float()
        self.v = v - s * theta
        self.count = self.count + s
        self.spikes += float(s.abs().sum())
        self.neuron_steps += s.numel()
        return (s * theta).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:.4g}, v_init={self.v_init}, dual={self.dual}"


def clip_layers(model: nn.Module) -> list[str]:
    """Names of the ``ClipReLU`` modules of ``model`` (empty: the model cannot be converted)."""
    return [name for name, m in model.named_modules() if isinstance(m, ClipReLU)]


def unsupported_layers(model: nn.Module) -> list[str]:
    """Layers that make a clip network unconvertible by rate: ReLU-like or pooling layers that are not linear
    in the rates (max pooling) or normalise per sample (layer norm)."""
    bad = (nn.MaxPool2d, nn.MaxPool1d, nn.LayerNorm, nn.ReLU, nn.GELU, nn.SiLU)
    return [name for name, m in model.named_modules() if isinstance(m, bad)]


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


@contextmanager
def spiking(model: nn.Module, scheme: Scheme = ECL,
            v_inits: Sequence[float] | None = None) -> Iterator[list[DualThresholdIF]]:
    """Within the block every ``ClipReLU`` of ``model`` is an IF neuron of ``scheme`` with the clip's threshold;
    the clips are put back afterwards. Yields the neurons (call ``step_reset`` before each new input).
    ``v_inits`` gives each neuron layer its own initial potential (in layer order) instead of the scheme's."""
    names = clip_layers(model)
    if not names:
        raise ValueError("the model has no clip activation (ClipReLU) to convert; train it on a -clip backbone")
    if v_inits is not None and len(v_inits) != len(names):
        raise ValueError(f"v_inits has {len(v_inits)} values for {len(names)} clip layers")
    originals = {name: model.get_submodule(name) for name in names}
    neurons = []
    for k, (name, clip) in enumerate(originals.items()):
        v_init = scheme.v_init if v_inits is None else float(v_inits[k])
        neuron = DualThresholdIF(float(clip.threshold.detach().abs()), v_init, scheme.dual)
        _set_module(model, name, neuron)
        neurons.append(neuron)
    try:
        yield neurons
    finally:
        for name, clip in originals.items():
            _set_module(model, name, clip)


@torch.no_grad()
def run_timesteps(forward: Callable[[torch.Tensor], torch.Tensor], neurons: list[DualThresholdIF], x: torch.Tensor,
                  T: int) -> torch.Tensor:
    """The converted network's mean output after each of ``T`` time steps: ``[T, B, ...]`` (row ``t-1`` is the
    readout at ``t`` steps). ``forward`` is one time step (the model, or a learner's ``predict``)."""
    for n in neurons:
        n.reset()
    total = None
    means = []
    for t in range(1, T + 1):
        out = forward(x).float()
        total = out if total is None else total + out
        means.append(total / t)
    for n in neurons:
        n.reset()
    return torch.stack(means)


def spike_rate(neurons: list[DualThresholdIF]) -> float:
    """Fraction of neuron-time-steps that sent a spike (either sign) since the neurons were made."""
    steps = sum(n.neuron_steps for n in neurons)
    return sum(n.spikes for n in neurons) / steps if steps else 0.0


@torch.no_grad()
def calibrate_v_init(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, T: int,
                     scheme: Scheme = ECL_OPT,
                     grid: Sequence[float] = CALIBRATION_GRID) -> tuple[list[float], float]:
    """Each clip layer's initial potential (a fraction of its threshold) for ``T`` steps, chosen on the
    calibration batch ``x``: the mean squared error between the converted network's mean output after ``T`` steps
    and the ANN's output, minimised by one sweep of coordinate descent in layer order over ``grid``, starting
    from ``scheme.v_init`` everywhere (a change is kept only when it lowers the error). Returns the fractions and
    the error they reach. ``forward`` is one step of the model (the ANN while the clips are in place)."""
    target = forward(x).float()
    n_layers = len(clip_layers(model))

    def error(v_inits: list[float]) -> float:
        with spiking(model, scheme, v_inits) as neurons:
            out = run_timesteps(forward, neurons, x, T)[-1]
        return float(((out - target) ** 2).mean())

    best = [float(scheme.v_init)] * n_layers
    best_error = error(best)
    for layer in range(n_layers):
        for value in grid:
            if value == best[layer]:
                continue
            trial = best[:layer] + [float(value)] + best[layer + 1:]
            trial_error = error(trial)
            if trial_error < best_error:
                best, best_error = trial, trial_error
    return best, best_error
