"""A small spiking network for spike trains that arrive over time (``tcn-audio``): the extractor of the spiking
strategies on sound.

Why its own network: an image is shown to a spiking ResNet by repeating it at every step (direct coding), but a
spike encoder (``lifelong/encoders/``) already gives a time-major train ``[T, B, lines]``, whose order in time is
the information. The network keeps that axis as its time: two temporal convolutions (``kernel`` steps, "same"
padding, i.e. each neuron sees a short window of past and coming steps, as synaptic delays would give), each
followed by batch norm and a LIF layer (``spiking.py``'s neuron; ReLU for the ordinary twin ``der`` uses), and the
per-step spikes of the last layer are the features ``[T, B, width]``. Kept small for CPUs: about 30 k parameters
at 64 input lines and width 64.
"""

from __future__ import annotations

import torch
from torch import nn

from lifelong.adapters.nets.spiking import NeuronConfig, _activation


class SpikingAudioNet(nn.Module):
    """``[T, B, lines]`` spike counts -> per-step features ``[T, B, width]`` (LIF neurons, or ReLU without
    ``neuron``)."""

    def __init__(self, lines: int, *, width: int = 64, kernel: int = 5, neuron: NeuronConfig | None = None) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number of steps, got {kernel}")
        self.conv1 = nn.Conv1d(lines, width, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.act1 = _activation(neuron)
        self.conv2 = nn.Conv1d(width, width, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.act2 = _activation(neuron)
        self.feature_dim = width

    @staticmethod
    def _temporal(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Convolve and normalise over time: ``[T, B, C]`` -> ``[T, B, C']``."""
        return bn(conv(x.permute(1, 2, 0))).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self._temporal(self.conv1, self.bn1, x).contiguous())
        return self.act2(self._temporal(self.conv2, self.bn2, out).contiguous())
