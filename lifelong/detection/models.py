"""The event detectors by name: ``hsvt`` and its two baselines, all with the same CenterNet head."""

from __future__ import annotations

from torch import nn

from lifelong.adapters.nets.event_baselines import ConvLSTMDetector, SpikingDetector
from lifelong.adapters.nets.hsvt import HsVTDetector
from lifelong.platform.config import ConfigError

DETECTORS: tuple[str, ...] = ("hsvt", "conv-lstm", "spiking")


def n_parameters(model: nn.Module) -> int:
    """All parameters of ``model`` (the size the comparisons report)."""
    return sum(p.numel() for p in model.parameters())


def matched_hidden(in_channels: int, n_classes: int, dim: int, target: int) -> int:
    """The ConvLSTM width whose detector has the parameter count closest to ``target`` (HsVT's)."""
    sizes = {h: n_parameters(ConvLSTMDetector(in_channels, n_classes, dim, h)) for h in range(4, 4 * dim + 1, 2)}
    return min(sizes, key=lambda h: abs(sizes[h] - target))


def build_detector(name: str, in_channels: int, n_classes: int, dim: int = 32, memory: bool = True) -> nn.Module:
    """Detector ``name`` at width ``dim``; the ConvLSTM's hidden width is matched to HsVT's parameter count."""
    if name == "hsvt":
        return HsVTDetector(in_channels, n_classes, dim, memory=memory)
    if name == "conv-lstm":
        target = n_parameters(HsVTDetector(in_channels, n_classes, dim))
        return ConvLSTMDetector(in_channels, n_classes, dim, matched_hidden(in_channels, n_classes, dim, target),
                                memory=memory)
    if name == "spiking":
        return SpikingDetector(in_channels, n_classes, dim, memory=memory)
    raise ConfigError(f"model: unknown detector {name!r}; allowed values: {', '.join(DETECTORS)}")
