"""Small backbones for class-incremental baselines, chosen by input size and overridable with ``model=NAME``.

Every backbone is a ``ClassifierNet``: a feature extractor with a known ``feature_dim`` and a linear head over
all classes of the stream, so strategies that need the two parts apart (iCaRL, DER) can take them.

The ``spiking-*`` backbones are the spiking ResNets of ``adapters/nets/spiking.py`` (LIF neurons, direct encoding
over T = 4 steps): their features are the spike rates averaged over time, so the logits are the time-averaged
logits and every strategy, metric and memory works on them unchanged; ``StepLogits`` recovers the
per-time-step logits ``[T, B, C]`` (for the TET loss and for components) from the same forward.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from lifelong.adapters.nets.hsvt import HsVTFeatures
from lifelong.adapters.nets.spiking import SpikingResNet, time_average
from lifelong.platform.config import ConfigError


class ClassifierNet(nn.Module):
    """``classifier(features(x))``; ``feature_dim`` is the width of the features."""

    def __init__(self, features: nn.Module, feature_dim: int, n_classes: int) -> None:
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _mlp(input_shape: tuple[int, ...], hidden: int = 256) -> tuple[nn.Module, int]:
    n_in = 1
    for d in input_shape:
        n_in *= d
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
    ), hidden


def _cnn_small(input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    channels = input_shape[0]
    net = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return net, 128


def _cnn_28(input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """A small CNN sized for 28x28 inputs (MNIST, Fashion-MNIST) on CPUs: three conv-BN-ReLU at 16/32/64
    channels with a 2x2 max pool after the first two (28 -> 14 -> 7), then global average pooling: about 1.9 M
    multiply-accumulates per image, against 29 M for ``cnn-small`` at 28x28."""
    channels = input_shape[0]
    net = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return net, 64


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet_reduced(input_shape: tuple[int, ...], width: int = 20) -> tuple[nn.Module, int]:
    """ResNet-18 with a 20-wide first stage (the "reduced ResNet-18" of GEM and Avalanche's SlimResNet18)."""
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    c_in = width
    for i, mult in enumerate((1, 2, 4, 8)):
        for j in range(2):
            stride = 2 if (i > 0 and j == 0) else 1
            layers.append(_BasicBlock(c_in, width * mult, stride))
            c_in = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c_in


class TimeAveraged(nn.Module):
    """A spiking network's per-step features ``[T, B, F]`` averaged over time: ``[B, F]``."""

    def __init__(self, snn: SpikingResNet) -> None:
        super().__init__()
        self.snn = snn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return time_average(self.snn(x))


def _spiking(layout: str, width_mult: float = 1.0) -> Callable[[tuple[int, ...]], tuple[nn.Module, int]]:
    """The spiking ResNet ``layout`` of ``adapters/nets/spiking.py`` (default LIF, T = 4), time-averaged features."""

    def build(input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
        if len(input_shape) != 3:
            raise ConfigError(f"model: spiking backbones need image inputs (C, H, W); the stream's are {input_shape}")
        snn = SpikingResNet(input_shape[0], layout=layout, width_mult=width_mult, T=4)
        return TimeAveraged(snn), snn.feature_dim

    return build


def _hsvt(input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """HsVT (``adapters/nets/hsvt.py``) for event frames ``(2T, H, W)``: per bin conv + window attention, a
    recurrent spiking layer across bins, features averaged over bins."""
    if len(input_shape) != 3:
        raise ConfigError(f"model: hsvt needs image inputs (C, H, W); the stream's are {input_shape}")
    net = HsVTFeatures(tuple(input_shape))
    return net, net.feature_dim


BACKBONES: dict[str, Callable[[tuple[int, ...]], tuple[nn.Module, int]]] = {
    "mlp": _mlp,
    "cnn-small": _cnn_small,
    "resnet-reduced": _resnet_reduced,
    "cnn-28": _cnn_28,
    # spiking ResNets (adapters/nets/spiking.py layouts): 8x8 digits, 28x28 images, 28x28 at half width, CIFAR
    "spiking-tiny": _spiking("tiny"),
    "spiking-mnist": _spiking("mnist"),
    "spiking-mnist-half": _spiking("mnist", 0.5),
    "spiking-cifar": _spiking("cifar"),
    # the hybrid spiking vision transformer for event streams (split-event-fashion-mnist)
    "hsvt": _hsvt,
}


def spiking_network(model: nn.Module) -> SpikingResNet | None:
    """The spiking ResNet inside a ``spiking-*`` backbone (None for an ordinary network)."""
    features = getattr(model, "features", None)
    return features.snn if isinstance(features, TimeAveraged) else None


class StepLogits:
    """Per-time-step logits ``[T, B, C]`` of a ``ClassifierNet``'s last forward: the classifier applied to each
    step's features of a spiking backbone (a forward hook keeps them), ``logits[None]`` for an ordinary one.
    Since the head is linear, their mean over T is the forward's output."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._steps: torch.Tensor | None = None
        snn = spiking_network(model)
        self._handle = snn.register_forward_hook(self._keep) if snn is not None else None

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        self._steps = out

    def step_logits(self, logits: torch.Tensor) -> torch.Tensor:
        steps, self._steps = self._steps, None
        if steps is None or not hasattr(self.model, "classifier"):
            return logits.unsqueeze(0)
        return self.model.classifier(steps).float()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._steps = None, None


# ------------------------------------------------ conversion-ready twins (clip activations, docs/snn-conversion.md)
INITIAL_THRESHOLD = 2.0


class _RoundSTE(torch.autograd.Function):
    """``floor(x + 1/2)`` forward, identity backward (straight-through)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class ClipReLU(nn.Module):
    """``clamp(x, 0, lambda)`` with a trainable ``lambda``; with ``levels > 0`` rounded to ``levels`` steps."""

    def __init__(self, threshold: float = INITIAL_THRESHOLD, levels: int = 0) -> None:
        super().__init__()
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        if levels < 0:
            raise ValueError(f"levels must be 0 (no rounding) or positive, got {levels}")
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.threshold.to(x.dtype)
        if self.levels == 0:
            return torch.minimum(torch.relu(x), lam)
        q = _RoundSTE.apply(x * self.levels / lam)
        return lam * torch.clamp(q / self.levels, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold.detach()):.4g}, levels={self.levels}"


# ------------------------------------------------------------------------------------------------ backbones
def _clip_cnn(input_shape: tuple[int, ...], widths: tuple[int, ...], pools: tuple[bool, ...], levels: int,
              ) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for width, pool in zip(widths, pools):
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), ClipReLU(levels=levels)]
        if pool:
            layers.append(nn.AvgPool2d(2))
        c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c_in


#: the backbones that have a clip variant: their channel widths and where they pool
_CLIP_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[bool, ...]]] = {
    "cnn-28": ((16, 32, 64), (True, True, False)),
    "cnn-small": ((32, 64, 128), (False, True, False)),
}
CLIP_BACKBONES: tuple[str, ...] = tuple(f"{name}-clip" for name in _CLIP_LAYOUTS)
_CLIP_NAME = re.compile(r"^(?P<base>.+)-clip(?P<levels>\d*)$")


def is_clip_backbone(name: str) -> bool:
    """Whether ``name`` names a clip backbone (``cnn-28-clip``, ``cnn-small-clip8``, ...)."""
    return _CLIP_NAME.match(name) is not None


def build_clip_backbone(name: str, input_shape: tuple[int, ...], n_classes: int) -> ClassifierNet:
    """``BASE-clip`` (continuous clip) or ``BASE-clipL`` (rounded to L levels): the conversion-ready twin of
    backbone ``BASE``, with ``ClipReLU`` for ReLU and average for max pooling."""
    match = _CLIP_NAME.match(name)
    if match is None or match["base"] not in _CLIP_LAYOUTS:
        raise ConfigError(f"model: unknown clip backbone {name!r}; allowed values: "
                          f"{', '.join(CLIP_BACKBONES)} (add a number of levels, e.g. cnn-28-clip4)")
    levels = int(match["levels"] or 0)
    if match["levels"] and levels < 1:
        raise ConfigError(f"model: {name!r}: the number of levels after -clip must be at least 1")
    widths, pools = _CLIP_LAYOUTS[match["base"]]
    features, dim = _clip_cnn(tuple(input_shape), widths, pools, levels)
    return ClassifierNet(features, dim, n_classes)


def default_backbone(input_shape: tuple[int, ...]) -> str:
    """The backbone ``model=auto`` picks: an MLP for tiny images (8x8 digits), up to 28x28 the CNN sized for
    MNIST-like images (``cnn-28``; ``cnn-small`` was the choice before, 15x the cost at 28x28), else the ResNet."""
    side = max(input_shape[1:]) if len(input_shape) > 1 else 0
    if side <= 8:
        return "mlp"
    if side <= 28:
        return "cnn-28"
    return "resnet-reduced"


def build_backbone(name: str, input_shape: tuple[int, ...], n_classes: int) -> ClassifierNet:
    """Build backbone ``name`` (or the default for ``auto``) with a head over ``n_classes``."""
    if name == "auto":
        name = default_backbone(input_shape)
    if name not in BACKBONES and "-clip" in name:  # conversion-ready twins with clip activations (ECL)
        return build_clip_backbone(name, input_shape, n_classes)
    if name not in BACKBONES:
        raise ConfigError(f"model: unknown backbone {name!r}; allowed values: auto, {', '.join(BACKBONES)}, "
                          "cnn-28-clip, cnn-small-clip")
    features, dim = BACKBONES[name](tuple(input_shape))
    return ClassifierNet(features, dim, n_classes)
