"""The two baselines HsVT is measured against on event streams, with HsVT's detection head (``CenterHead``).

- ``ConvLSTMDetector``: a recurrent ANN detector, the usual event-camera baseline (RED, Perot et al. 2020, and
  RVT's recurrent stage are LSTM-based): HsVT's convolutional stem per bin, then one convolutional LSTM cell
  (Shi et al. 2015; 3x3 gates over ``concat(x_t, h_{t-1})``) carrying ``h`` and ``c`` across bins, then the head
  on ``concat(x_t, h_t)``. No attention. ``hidden`` is chosen by the detection engine so the whole detector has
  about as many parameters as HsVT at the same width.
- ``SpikingDetector``: a pure spiking detector: the stem's two stride-2 convolutions with BN and multi-step LIF
  neurons (``adapters/nets/spiking.py``: tau 2, hard reset, triangle surrogate; their membranes run across the
  bins), then HsVT's recurrent spiking temporal module, then the head on ``concat(spikes, temporal spikes)``.
  The same network as HsVT with the ANN spatial module (convolution + attention) swapped for a spiking one.
"""

from __future__ import annotations

import torch
from torch import nn

from lifelong.adapters.nets.hsvt import CenterHead, ConvStem, SpikingTemporal, fold_time, unfold_time
from lifelong.adapters.nets.spiking import LIF


class ConvLSTMCell(nn.Module):
    """One convolutional LSTM step: gates ``i, f, o, g`` from a 3x3 convolution of ``concat(x, h)``."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, 3, 1, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, o, g = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMDetector(nn.Module):
    """Event frames ``[B, T, P, H, W]`` -> per-bin CenterNet maps, through a conv stem and a ConvLSTM."""

    stride = 4

    def __init__(self, in_channels: int = 2, n_classes: int = 2, dim: int = 32, hidden: int = 16,
                 memory: bool = True) -> None:
        super().__init__()
        self.stem = ConvStem(in_channels, dim)
        self.cell = ConvLSTMCell(dim, hidden)
        self.head = CenterHead(dim + hidden, n_classes)
        self.memory = memory

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        x_seq = fold_time(self.stem, frames.transpose(0, 1))
        h = x_seq.new_zeros(x_seq.shape[1], self.cell.hidden, *x_seq.shape[-2:])
        c = torch.zeros_like(h)
        fused = []
        for t in range(x_seq.shape[0]):
            if not self.memory:
                h, c = torch.zeros_like(h), torch.zeros_like(c)
            h, c = self.cell(x_seq[t], h, c)
            fused.append(torch.cat([x_seq[t], h], 1))
        out = self.head(torch.stack(fused).flatten(0, 1))
        return unfold_time(out, frames.shape[1], frames.shape[0])


class SpikingDetector(nn.Module):
    """Event frames ``[B, T, P, H, W]`` -> per-bin CenterNet maps, spiking from the input on."""

    stride = 4

    def __init__(self, in_channels: int = 2, n_classes: int = 2, dim: int = 32, memory: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, dim // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(dim // 2))
        self.conv2 = nn.Sequential(nn.Conv2d(dim // 2, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim))
        self.lif1, self.lif2 = LIF(), LIF()
        self.temporal = SpikingTemporal(dim, dim, memory=memory)
        self.head = CenterHead(2 * dim, n_classes)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        x_seq = self.lif1(fold_time(self.conv1, frames.transpose(0, 1)))
        x_seq = self.lif2(fold_time(self.conv2, x_seq))
        fused = torch.cat([x_seq, self.temporal(x_seq)], dim=2)
        return unfold_time(self.head(fused.flatten(0, 1)), frames.shape[1], frames.shape[0])
