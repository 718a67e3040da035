"""Spiking building blocks in plain torch: LIF neurons, direct encoding, a spiking ResNet, spike/op counters.

Follows the neuron and backbone of ALADE-SNN (Ni et al., AAAI 2025, whose code is the first commits of
HOOKke/PS-SNN; docs/alade-snn.md):

- multi-step LIF, ``u_t = u_{t-1} - (u_{t-1} - v_reset)/tau + x_t`` (``tau=2``, ``v_reset=0`` gives the paper's
  ``u_t = 0.5 u_{t-1} + x_t``), spike ``s_t = H(u_t - v_threshold)``, hard reset ``u <- (1 - s) u + s v_reset``
  or soft reset ``u <- u - s v_threshold``. The same arithmetic, in the same order, as spikingjelly's ``LIFNode``
  with ``decay_input=False`` (``bench/lif.py`` checks spikes and gradients are identical). It runs as one fused
  autograd function (``LIFMultiStep``: forward and the closed-form backward recurrence over T in plain torch
  ops, as spikingjelly's fused neurons), bit-identical to the step-by-step autograd form
  (``lif_multistep_autograd``, kept as the reference and as what ``torch.compile`` traces when
  ``NeuronConfig.compile`` is set). Compiling stays opt-in: on two cores the first compile of a surrogate takes
  minutes and every later process still about 10 s with inductor's on-disk cache, too long for a default run
  (docs/scaling.md has the figures);
- surrogate gradients: triangle ``(1/g^2) max(0, g - |x|)`` (TET, the paper's default, ``g=1``), sigmoid
  ``a sig(a x)(1 - sig(a x))`` (``a=4``) and arctan ``(a/2) / (1 + (pi a x / 2)^2)`` (``a=2``), as spikingjelly
  defines them;
- the neuron is stateless across calls: its membrane potential lives only inside one forward over the T steps,
  so deep copies, teachers and changing batch sizes are safe (no ``reset_net`` needed);
- tensors flow time-major, ``[T, B, ...]``; convolutions and batch norm see ``[T*B, ...]`` (the BN statistics are
  shared over time steps, as in the authors' code);
- a spiking ResNet of BasicBlocks (conv-BN-LIF-conv-BN + shortcut, then LIF) with the CIFAR layout of the paper
  (64-wide stem, stages [3, 3, 2] at 128/256/512), a tiny layout for 8x8 digits and an ``mnist`` layout for
  28x28 images (stride-2 stem, stages at 16/32/64), all scaled by a width multiplier;
- counters of spike rates per LIF layer and of synaptic operations: a convolution or linear layer whose input is
  binary (spikes) costs ``MACs x input spike rate`` accumulates (SOPs); one with real-valued input (the encoding
  layer, the classifier on pooled rates) costs its MACs. Energy uses 0.9 pJ per accumulate and 4.6 pJ per MAC
  (45 nm figures of Horowitz 2014, the usual choice in SNN papers).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import nn

SURROGATES: tuple[str, ...] = ("triangle", "sigmoid", "arctan")
DEFAULT_ALPHA: dict[str, float] = {"triangle": 1.0, "sigmoid": 4.0, "arctan": 2.0}
ENERGY_PJ_PER_MAC = 4.6
ENERGY_PJ_PER_AC = 0.9


# ----------------------------------------------------------------------------------------------- surrogates
def surrogate_backward(grad_out: torch.Tensor, x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """``grad_out * d spike / d x`` at ``x = u - threshold``, in spikingjelly's operation order (bit-identical)."""
    if surrogate == "triangle":  # spikingjelly's PiecewiseQuadratic with a = 1/gamma
        a = 1.0 / alpha
        x_abs = x.abs()
        return (grad_out * (-(a**2) * x_abs + a)).masked_fill_(x_abs > alpha, 0)
    if surrogate == "sigmoid":
        sgax = (x * alpha).sigmoid_()
        return grad_out * (1.0 - sgax) * sgax * alpha
    if surrogate == "arctan":
        a = alpha / 2
        ax = math.pi * a * x
        return a / (1 + ax * ax) * grad_out
    raise ValueError(f"surrogate: {surrogate!r} is not allowed; allowed values: {', '.join(SURROGATES)}")


def surrogate_grad(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """d spike / d x of the surrogate ``surrogate`` at ``x = u - threshold`` (shape of ``x``)."""
    return surrogate_backward(torch.ones_like(x), x, surrogate, alpha)


class SpikeFunction(torch.autograd.Function):
    """Heaviside step forward (``x >= 0`` spikes), surrogate gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return surrogate_backward(grad_out, x, ctx.surrogate, ctx.alpha), None, None


def spike(x: torch.Tensor, surrogate: str = "triangle", alpha: float | None = None) -> torch.Tensor:
    """Spikes of ``x = u - threshold`` with the named surrogate gradient."""
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate: {surrogate!r} is not allowed; allowed values: {', '.join(SURROGATES)}")
    return SpikeFunction.apply(x, surrogate, DEFAULT_ALPHA[surrogate] if alpha is None else float(alpha))


# --------------------------------------------------------------------------------------------------- neuron
def _charge(v: torch.Tensor, x: torch.Tensor, tau: float, v_reset: float | None, decay_input: bool) -> torch.Tensor:
    """``h_t`` from ``v_{t-1}`` and ``x_t``: spikingjelly's expressions, in their order (bit-identical results)."""
    if v_reset is None:
        return v + (x - v) / tau if decay_input else v - v / tau + x
    return v + (x - (v - v_reset)) / tau if decay_input else v - (v - v_reset) / tau + x


def _rest(x_seq: torch.Tensor, v_reset: float | None) -> torch.Tensor:
    return torch.zeros_like(x_seq[0]) if v_reset is None or v_reset == 0.0 else torch.full_like(x_seq[0], v_reset)


def lif_multistep_autograd(
    x_seq: torch.Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = False,
    detach_reset: bool = False,
    surrogate: str = "triangle",
    alpha: float = 1.0,
) -> torch.Tensor:
    """The LIF written step by step for autograd: the reference that ``lif_multistep`` is tested against, and
    the form ``torch.compile`` traces (``NeuronConfig.compile``)."""
    v = _rest(x_seq, v_reset)
    out = []
    for t in range(x_seq.shape[0]):
        v = _charge(v, x_seq[t], tau, v_reset, decay_input)
        s = SpikeFunction.apply(v - v_threshold, surrogate, alpha)
        s_r = s.detach() if detach_reset else s
        if v_reset is None:
            v = v - s_r * v_threshold
        else:
            v = s_r * v_reset + (1.0 - s_r) * v
        out.append(s)
    return torch.stack(out)


class LIFMultiStep(torch.autograd.Function):
    """The whole multi-step LIF as one autograd node (as spikingjelly's fused neurons do).

    Forward runs the recurrence over T without recording a graph and keeps only the charged potentials ``h_t``
    (the spikes are ``h_t >= threshold``). Backward is the reverse recurrence written out, with ``v_t`` the potential after the reset of
    step t: ``g_s = dL/ds_t + g_v dv_t/ds_t``, ``g_h = surrogate'(h_t - threshold) g_s + g_v dv_t/dh_t``,
    ``dL/dx_t = g_h`` (``g_h / tau`` with ``decay_input``), ``g_v <- g_h - g_h / tau``. Each product and sum is
    the one autograd computes on the step-by-step form, in the same order, so spikes and gradients are
    bit-identical to ``lif_multistep_autograd`` (zeros may differ in sign). Speed comes from doing the work of
    a step in a few reused buffers, in place, with float masks (``torch.ge(..., out=float)``): on CPU a bool
    mask, ``masked_fill`` or ``where`` costs 4-20x a float multiply, and every fresh buffer costs page faults.
    The defaults (tau 2, hard reset to 0, the triangle with gamma 1) take shorter forms that round the same way
    (``v - v/2 + x`` as ``x + 0.5 v``, the reset as ``(h < threshold) h``, ``1 - |z|`` clamped at 0 for the mask):
    fewer passes over memory, which is what the neuron's time is (``bench/spiking_profile.py``).
    """

    @staticmethod
    def forward(ctx: Any, x_seq: torch.Tensor, tau: float, v_threshold: float, v_reset: float | None,  # type: ignore[override]
                decay_input: bool, detach_reset: bool, surrogate: str, alpha: float) -> torch.Tensor:
        T = x_seq.shape[0]
        h_seq = torch.empty_like(x_seq, memory_format=torch.contiguous_format)
        spikes = torch.empty_like(h_seq)
        v = torch.empty_like(h_seq[0])  # the potential after the reset
        tmp = torch.empty_like(v)
        if v_reset is not None and v_reset != 0.0:
            v.fill_(v_reset)  # rest
        halving = tau == 2.0 and not decay_input and (v_reset is None or v_reset == 0.0)
        for t in range(T):
            h, s, x = h_seq[t], spikes[t], x_seq[t]
            if t == 0 and (v_reset is None or v_reset == 0.0):
                # from rest at 0: 0 - 0 / tau + x is x and 0 + (x - 0) / tau is x / tau
                torch.div(x, tau, out=h) if decay_input else h.copy_(x)
            elif halving:  # v - v / 2 + x is x + 0.5 v exactly (v / 2 and v - v / 2 are exact): one operation
                torch.add(x, v, alpha=0.5, out=h)
            elif decay_input:  # v + (x - (v - v_reset)) / tau
                d = v if v_reset is None else torch.sub(v, v_reset, out=tmp)
                torch.sub(x, d, out=tmp).div_(tau)
                torch.add(v, tmp, out=h)
            else:  # v - (v - v_reset) / tau + x
                d = v if v_reset is None else torch.sub(v, v_reset, out=tmp)
                torch.div(d, tau, out=tmp)
                torch.add(torch.sub(v, tmp, out=tmp), x, out=h)
            torch.ge(h, v_threshold, out=s)  # h - threshold >= 0 exactly when h >= threshold
            if t + 1 == T:
                break
            if v_reset is None:  # h - s * threshold
                torch.sub(h, torch.mul(s, v_threshold, out=v), out=v)
            elif v_reset == 0.0:  # (1 - s) * h is h where h < threshold, else 0 (h > 0 there: no -0)
                torch.lt(h, v_threshold, out=v).mul_(h)
            else:  # s * v_reset + (1 - s) * h
                torch.mul(s, -1.0, out=v).add_(1.0).mul_(h)
                if v_reset != 0.0:
                    v.add_(torch.mul(s, v_reset, out=tmp))
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(h_seq)  # the spikes are recomputed from it: the caller may change the output
        ctx.settings = (tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
        return spikes

    @staticmethod
    def backward(ctx: Any, grad_spikes: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (h_seq,) = ctx.saved_tensors
        tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha = ctx.settings
        grad_x = torch.empty_like(h_seq)
        f, m, g_s, g_v = (torch.empty_like(h_seq[0]) for _ in range(4))
        for t in range(h_seq.shape[0] - 1, -1, -1):
            h, last = h_seq[t], t + 1 == h_seq.shape[0]
            # g_s = dL/ds_t + g_v dv_t/ds_t
            if last or detach_reset:
                g_s.copy_(grad_spikes[t])
            elif v_reset is None:  # v_t = h_t - s_t * threshold
                torch.sub(grad_spikes[t], torch.mul(g_v, v_threshold, out=g_s), out=g_s)
            else:  # v_t = s_t * v_reset + (1 - s_t) * h_t; autograd adds the three terms in this order
                torch.sub(grad_spikes[t], torch.mul(g_v, h, out=g_s), out=g_s)
                if v_reset != 0.0:
                    g_s.add_(torch.mul(g_v, v_reset, out=f))
            # times the surrogate derivative at z = h - threshold, in the reference's operation order
            torch.sub(h, v_threshold, out=f)
            if surrogate == "triangle":  # (g (a - a^2 |z|)).masked_fill(|z| > alpha, 0), a = 1 / alpha
                a = 1.0 / alpha
                f.abs_()
                if alpha == 1.0:  # 1 - |z| is exact and below 0 exactly where |z| > 1: clamping is the mask
                    g_s.mul_(f.mul_(-1.0).add_(1.0).clamp_(min=0.0))  # (zeros may differ in sign)
                else:
                    torch.le(f, alpha, out=m)
                    g_s.mul_(f.mul_(-(a**2)).add_(a).mul_(m))
            elif surrogate == "sigmoid":  # g (1 - sig(alpha z)) sig(alpha z) alpha
                f.mul_(alpha).sigmoid_()
                g_s.mul_(torch.mul(f, -1.0, out=m).add_(1.0)).mul_(f).mul_(alpha)
            elif surrogate == "arctan":  # (a/2) / (1 + (pi a/2 z)^2) g, where c / y is y.reciprocal() * c
                half = alpha / 2
                f.mul_(math.pi * half)
                g_s.mul_(f.mul_(f).add_(1).reciprocal_().mul_(half))
            else:
                raise ValueError(f"surrogate: {surrogate!r} is not allowed; allowed values: {', '.join(SURROGATES)}")
            # g_h = that + g_v dv_t/dh_t, written where dL/dx_t goes
            g_h = grad_x[t]
            if last:
                g_h.copy_(g_s)
            elif v_reset is None:
                torch.add(g_s, g_v, out=g_h)
            else:
                keep = torch.lt(h, v_threshold, out=m)  # 1 - s_t, as a float mask
                torch.addcmul(g_s, g_v, keep, out=g_h)  # g_v * keep is exact (0 or g_v): one rounding, as before
            if t and tau == 2.0:  # g_h - g_h / 2 is g_h / 2 exactly: one operation
                torch.mul(g_h, 0.5, out=g_v)
            elif t:  # dL/dv_{t-1} = g_h - g_h / tau, both with and without decay_input
                torch.sub(g_h, torch.div(g_h, tau, out=g_v), out=g_v)
            if decay_input:
                g_h.div_(tau)
        return grad_x, None, None, None, None, None, None, None


def lif_multistep(
    x_seq: torch.Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = False,
    detach_reset: bool = False,
    surrogate: str = "triangle",
    alpha: float = 1.0,
) -> torch.Tensor:
    """Run a LIF layer over ``x_seq`` of shape ``[T, ...]`` from rest and return the spikes ``[T, ...]``."""
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate: {surrogate!r} is not allowed; allowed values: {', '.join(SURROGATES)}")
    return LIFMultiStep.apply(x_seq, float(tau), float(v_threshold), None if v_reset is None else float(v_reset),
                              bool(decay_input), bool(detach_reset), surrogate, float(alpha))


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def _compiled_lif() -> Callable[..., torch.Tensor]:
    if "lif" not in _COMPILED:
        _COMPILED["lif"] = torch.compile(lif_multistep_autograd, dynamic=False)
    return _COMPILED["lif"]


@dataclass
class NeuronConfig:
    """LIF settings shared by every neuron of a network."""

    tau: float = 2.0
    v_threshold: float = 1.0
    reset: Literal["hard", "soft"] = "hard"
    v_reset: float = 0.0
    decay_input: bool = False
    detach_reset: bool = False
    surrogate: Literal["triangle", "sigmoid", "arctan"] = "triangle"
    alpha: float | None = None  # gamma of the triangle; None = the surrogate's default (1, 4, 2)
    compile: bool = False

    def validate(self) -> None:
        if self.tau <= 1.0:
            raise ValueError(f"tau must be greater than 1, got {self.tau}")
        if self.v_threshold <= 0:
            raise ValueError(f"v_threshold must be positive, got {self.v_threshold}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate: {self.surrogate!r} is not allowed; allowed values: {', '.join(SURROGATES)}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")


class LIF(nn.Module):
    """Multi-step LIF neuron over ``[T, B, ...]``; stateless across calls; optionally records its spike rate."""

    def __init__(self, config: NeuronConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or NeuronConfig()
        if overrides:
            cfg = NeuronConfig(**{**cfg.__dict__, **overrides})
        cfg.validate()
        self.cfg = cfg
        self.alpha = DEFAULT_ALPHA[cfg.surrogate] if cfg.alpha is None else float(cfg.alpha)
        self.recording = False
        self.spike_count = 0.0
        self.neuron_count = 0

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        fn = _compiled_lif() if c.compile else lif_multistep
        s = fn(
            x_seq,
            c.tau,
            c.v_threshold,
            None if c.reset == "soft" else c.v_reset,
            c.decay_input,
            c.detach_reset,
            c.surrogate,
            self.alpha,
        )
        if self.recording:
            # counted in float32: under fp16 autocast a sum above 65504 spikes would be inf (bf16: rounded)
            self.spike_count += float(s.detach().sum(dtype=torch.float32))
            self.neuron_count += s.numel()
        return s

    def extra_repr(self) -> str:
        c = self.cfg
        return f"tau={c.tau}, v_threshold={c.v_threshold}, reset={c.reset}, surrogate={c.surrogate}({self.alpha})"


# ------------------------------------------------------------------------------------------ encode/readout
def direct_encode(x: torch.Tensor, T: int) -> torch.Tensor:
    """Repeat a static input ``[B, ...]`` over ``T`` time steps: ``[T, B, ...]``."""
    return x.unsqueeze(0).repeat(T, *([1] * x.dim()))


def time_average(seq: torch.Tensor) -> torch.Tensor:
    """Average a time-major ``[T, B, ...]`` output over time (the rate readout)."""
    return seq.mean(0)


def _seq(fn: Callable[[torch.Tensor], torch.Tensor], x_seq: torch.Tensor) -> torch.Tensor:
    """Apply a stateless layer to every time step at once by folding time into the batch."""
    T, B = x_seq.shape[:2]
    y = fn(x_seq.flatten(0, 1))
    return y.reshape(T, B, *y.shape[1:])


# ---------------------------------------------------------------------------------------------- the ResNet
class SeqReLU(nn.Module):
    """ReLU in the place of a LIF: the same ResNet as an ordinary network (the ``der`` baseline's extractor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _activation(neuron: NeuronConfig | None) -> nn.Module:
    return SeqReLU() if neuron is None else LIF(neuron)


class SpikingBasicBlock(nn.Module):
    """conv-BN-LIF-conv-BN (+ shortcut) then LIF, over ``[T, B, C, H, W]`` (ReLU when ``neuron`` is None)."""

    def __init__(self, c_in: int, c_out: int, stride: int, neuron: NeuronConfig | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.lif1 = _activation(neuron)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.lif2 = _activation(neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lif1(_seq(lambda z: self.bn1(self.conv1(z)), x))
        out = _seq(lambda z: self.bn2(self.conv2(z)), out) + _seq(self.shortcut, x)
        return self.lif2(out)


LAYOUTS: dict[str, dict[str, Any]] = {
    # the paper's CIFAR network: 64-wide stem, [3, 3, 2] blocks at 128/256/512 (about 12.5 M parameters)
    "cifar": {"stem": 64, "widths": (128, 256, 512), "blocks": (3, 3, 2), "strides": (1, 2, 2)},
    # 8x8 digits on a CPU: two one-block stages, 8x8 -> 4x4
    "tiny": {"stem": 16, "widths": (16, 32), "blocks": (1, 1), "strides": (1, 2)},
    # 28x28 images (MNIST, Fashion-MNIST) on a CPU: a stride-2 stem (28 -> 14), then three one-block stages,
    # 14x14 -> 7x7 -> 4x4 at 16/32/64; about 2.5 M MACs per time step, a tenth of ``cifar`` at 28x28
    "mnist": {"stem": 16, "stem_stride": 2, "widths": (16, 32, 64), "blocks": (1, 1, 1), "strides": (1, 2, 2)},
}


class SpikingResNet(nn.Module):
    """Direct-encoded spiking ResNet: ``[B, C, H, W]`` -> per-time-step features ``[T, B, feature_dim]``.

    With ``spiking=False`` the LIF neurons become ReLUs and T is 1: the same network as an ANN, so that a
    spiking method and its ordinary counterpart are compared on one architecture.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        layout: str = "tiny",
        width_mult: float = 1.0,
        T: int = 4,
        neuron: NeuronConfig | None = None,
        stem: int | None = None,
        widths: Sequence[int] | None = None,
        blocks: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        spiking: bool = True,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout: {layout!r} is not allowed; allowed values: {', '.join(LAYOUTS)}")
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        spec = dict(LAYOUTS[layout])
        for key, value in (("stem", stem), ("widths", widths), ("blocks", blocks), ("strides", strides)):
            if value is not None:
                spec[key] = value
        if not (len(spec["widths"]) == len(spec["blocks"]) == len(spec["strides"])):
            raise ValueError("widths, blocks and strides must have the same length (one entry per stage)")
        neuron = (neuron or NeuronConfig()) if spiking else None
        if not spiking:
            T = 1

        def scaled(c: int) -> int:
            return max(1, int(round(c * width_mult)))

        self.T = T
        self.spiking = spiking
        c = scaled(spec["stem"])
        self.stem_conv = nn.Conv2d(in_channels, c, 3, int(spec.get("stem_stride", 1)), 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c)
        self.stem_lif = _activation(neuron)
        stages: list[nn.Module] = []
        for width, n_blocks, stride in zip(spec["widths"], spec["blocks"], spec["strides"]):
            for j in range(n_blocks):
                stages.append(SpikingBasicBlock(c, scaled(width), stride if j == 0 else 1, neuron))
                c = scaled(width)
        self.blocks = nn.Sequential(*stages)
        self.feature_dim = c

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's spikes before pooling, ``[T, B, C, H, W]`` (what attention over a sample's own
        spatio-temporal features needs, as FSL-SNN's self-feature module does)."""
        x_seq = direct_encode(x, self.T)
        out = self.stem_lif(_seq(lambda z: self.stem_bn(self.stem_conv(z)), x_seq))
        return self.blocks(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(-2, -1))  # global average pooling of spikes: [T, B, C]


# ------------------------------------------------------------------------------------------------ counters
@dataclass
class OpCount:
    """Operations of one forward pass, per input sample."""

    macs: float = 0.0  # multiply-accumulates (real-valued inputs)
    sops: float = 0.0  # synaptic operations: accumulates triggered by spikes
    dense_macs: float = 0.0  # what the same layers would cost as an ANN (every input non-zero)
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def energy_uj(self) -> float:
        """Estimated energy in microjoules (4.6 pJ per MAC, 0.9 pJ per accumulate)."""
        return (self.macs * ENERGY_PJ_PER_MAC + self.sops * ENERGY_PJ_PER_AC) * 1e-6

    def as_dict(self) -> dict[str, Any]:
        return {
            "macs_per_sample": self.macs,
            "sops_per_sample": self.sops,
            "dense_macs_per_sample": self.dense_macs,
            "energy_uj_per_sample": self.energy_uj,
        }


def _layer_macs(module: nn.Module, out: torch.Tensor) -> float:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        k = math.prod(module.kernel_size) * module.in_channels // module.groups
        return float(out.numel() * k)
    if isinstance(module, nn.Linear):
        return float(out.numel() * module.in_features)
    return 0.0


@torch.no_grad()
def count_ops(model: nn.Module, forward: Callable[[], Any], batch_size: int) -> OpCount:
    """Count MACs and spike-driven accumulates of the Conv1d/Conv2d/Linear layers of ``model`` during ``forward()``.

    A layer whose input holds only 0 and 1 is spike-driven: it costs ``MACs x fraction of non-zero inputs``
    accumulates; any other input costs the full MACs. Divided by ``batch_size`` to give per-sample figures.
    """
    count = OpCount()
    handles = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = inputs[0]
        macs = _layer_macs(module, out)
        binary = bool(((x == 0) | (x == 1)).all())
        rate = float((x != 0).float().mean()) if binary else 1.0
        count.dense_macs += macs
        if binary:
            count.sops += macs * rate
        else:
            count.macs += macs
        count.layers.append({"layer": type(module).__name__, "binary_input": binary, "input_rate": rate, "macs": macs})

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    for attr in ("macs", "sops", "dense_macs"):
        setattr(count, attr, getattr(count, attr) / max(1, batch_size))
    return count


@contextmanager
def record_spikes(model: nn.Module) -> Iterator[dict[str, LIF]]:
    """Within the block every LIF of ``model`` counts its spikes; yields ``{name: LIF}`` (see ``spike_rates``)."""
    neurons = {name: m for name, m in model.named_modules() if isinstance(m, LIF)}
    for m in neurons.values():
        m.recording, m.spike_count, m.neuron_count = True, 0.0, 0
    try:
        yield neurons
    finally:
        for m in neurons.values():
            m.recording = False


def spike_rates(neurons: dict[str, LIF]) -> dict[str, float]:
    """Fraction of neuron-time-steps that spiked, per LIF layer, after ``record_spikes``."""
    return {name: (m.spike_count / m.neuron_count if m.neuron_count else 0.0) for name, m in neurons.items()}
