"""HsVT: a hybrid spiking vision transformer for event streams, as a detector and as a classification backbone.

Follows "Hybrid Spiking Vision Transformer for Object Detection with Event Cameras" (Xu, Deng, Shen, Chen, Tang
and Pan, ICML 2025). What the paper gives (its abstract; no code is public): a spatial feature-extraction module
for local and global features, ANN parts (convolution and self-attention), and a temporal feature-extraction
module of spiking neurons for time dependencies and long-term patterns across the event sequence, ahead of a
detection head. Everything below the level of that description is a choice made here, and says so:

- input: the events of each time bin as a 2-channel frame (ON, OFF counts), ``[B, T, 2, H, W]``;
- spatial module, per bin with time folded into the batch (no state): a convolutional stem (two 3x3 stride-2
  conv-BN-GELU, stride 4: the local features), then two attention blocks in the style of RVT/MaxViT, the
  event-camera detector HsVT is compared with: self-attention inside non-overlapping ``window`` x ``window``
  blocks (local), then inside a ``window`` x ``window`` grid of tokens spread over the whole map (global, the
  dilated "grid" attention), each pre-norm with a 2x MLP and residuals. Maps that do not divide into windows are
  padded, and the padded tokens are masked out of the attention;
- temporal module, carrying state across bins: a recurrent layer of leaky integrate-and-fire neurons. The input
  current of bin t is ``BN(conv1x1(x_t)) + conv3x3(s_{t-1})`` (the spatial features and the layer's own
  spikes of the previous bin), ``v_t = beta * v_{t-1} + I_t``, ``s_t = H(v_t - 1)`` with a triangle surrogate
  gradient (``adapters/nets/spiking.py``), and a soft reset ``v_t -= s_t``. ``beta`` is learnt per channel
  (``sigmoid`` of a parameter starting at 0.9, as PLIF learns its time constant), so channels can keep a
  memory for many bins; with the soft reset a neuron keeps what is above threshold. With ``memory=False`` the
  state is cleared at every bin (the ablation of the temporal module);
- detection head (``CenterHead``), anchor-free as CenterNet (Zhou et al. 2019): from ``concat(x_t, s_t)`` at
  stride 4, a class heatmap, the box size and the sub-cell centre offset, per bin;
- classification (``model=hsvt`` in the backbone table): a stream sample ``(2T, H, W)`` is read as T bins of
  two channels (a sample with an odd channel count is one bin of all its channels, so static images work too);
  the features are ``concat(x_t, s_t)`` pooled over space and averaged over the bins (the rate readout of the
  other spiking backbones), and a linear head gives the logits of a ``ClassifierNet``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.nets.spiking import spike


class ConvStem(nn.Module):
    """Two 3x3 stride-2 conv-BN-GELU layers: ``[N, C, H, W]`` -> ``[N, dim, H/4, W/4]`` (the local features)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, dim // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(dim // 2), nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim), nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class WindowAttention(nn.Module):
    """Pre-norm multi-head self-attention inside windows, then a 2x MLP, both residual, on ``[N, C, H, W]``.

    ``mode="block"``: each window is a ``window`` x ``window`` patch of neighbouring tokens (local).
    ``mode="grid"``: each window takes ``window`` x ``window`` tokens spaced evenly over the whole map (global).
    ``matmul_macs`` holds the multiply-accumulates of the attention products (QK^T and AV) of the last forward,
    which a counter of Conv2d/Linear layers does not see.
    """

    def __init__(self, dim: int, heads: int = 2, window: int = 4, mode: str = "block") -> None:
        super().__init__()
        if mode not in ("block", "grid"):
            raise ValueError(f"mode: {mode!r} is not allowed; allowed values: block, grid")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads, self.window, self.mode = heads, window, mode
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.matmul_macs = 0.0

    def _partition(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """``[N, Hp, Wp, C]`` -> ``[N * windows, window^2, C]``."""
        n, hp, wp, c = x.shape
        w = self.window
        gh, gw = hp // w, wp // w
        if self.mode == "block":  # (gh, w, gw, w): windows of neighbours
            x = x.view(n, gh, w, gw, w, c).permute(0, 1, 3, 2, 4, 5)
        else:  # (w, gh, w, gw): tokens gh rows and gw columns apart
            x = x.view(n, w, gh, w, gw, c).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n * gh * gw, w * w, c), (n, gh, gw, c)

    def _merge(self, x: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        n, gh, gw, c = shape
        w = self.window
        x = x.view(n, gh, gw, w, w, c)
        if self.mode == "block":
            return x.permute(0, 1, 3, 2, 4, 5).reshape(n, gh * w, gw * w, c)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(n, w * gh, w * gw, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w_ = x.shape
        win = self.window
        hp, wp = math.ceil(h / win) * win, math.ceil(w_ / win) * win
        tokens = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, wp - w_, 0, hp - h))
        valid = torch.zeros(1, hp, wp, 1, dtype=torch.bool, device=x.device)
        valid[:, :h, :w_] = True
        windows, shape = self._partition(tokens)
        keep, _ = self._partition(valid.float())  # [windows of one sample, L, 1]
        keep = keep.squeeze(-1).bool().repeat(n, 1)  # [N * windows, L]
        qkv = self.qkv(self.norm1(windows)).view(len(windows), win * win, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mask = keep[:, None, None, :] if hp != h or wp != w_ else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(len(windows), win * win, c))
        self.matmul_macs = 2.0 * len(windows) * (win * win) ** 2 * c
        windows = windows + out
        windows = windows + self.mlp(self.norm2(windows))
        return self._merge(windows, shape)[:, :h, :w_].permute(0, 3, 1, 2)


class SpatialModule(nn.Module):
    """Per bin, no state: the convolutional stem (local), then block and grid attention (global)."""

    def __init__(self, in_channels: int, dim: int, heads: int = 2, window: int = 4) -> None:
        super().__init__()
        self.stem = ConvStem(in_channels, dim)
        self.block = WindowAttention(dim, heads, window, "block")
        self.grid = WindowAttention(dim, heads, window, "grid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid(self.block(self.stem(x)))


class SpikingTemporal(nn.Module):
    """A recurrent LIF layer over bins ``[T, B, C, h, w]`` -> spikes ``[T, B, dim, h, w]`` (see the module
    docstring); ``memory=False`` clears its state at every bin."""

    def __init__(self, in_channels: int, dim: int, memory: bool = True, beta: float = 0.9) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.rec = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.beta_logit = nn.Parameter(torch.full((dim,), math.log(beta / (1 - beta))))
        self.memory = memory
        self.dim = dim

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        t_steps, b = x_seq.shape[:2]
        current = self.inp(x_seq.flatten(0, 1)).view(t_steps, b, self.dim, *x_seq.shape[-2:])
        beta = torch.sigmoid(self.beta_logit).view(1, -1, 1, 1)
        v = torch.zeros_like(current[0])
        s = torch.zeros_like(current[0])
        out = []
        for t in range(t_steps):
            if not self.memory:
                v, s = torch.zeros_like(v), torch.zeros_like(s)
            v = beta * v + current[t] + self.rec(s)
            s = spike(v - 1.0, "triangle")
            v = v - s
            out.append(s)
        return torch.stack(out)


class CenterHead(nn.Module):
    """CenterNet's head on one feature map: class heatmap logits, box size (pixels of the input, through
    softplus) and the centre's offset within its cell (in cells, through sigmoid)."""

    def __init__(self, in_channels: int, n_classes: int, hidden: int = 16) -> None:
        super().__init__()

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, 1, 1), nn.ReLU(), nn.Conv2d(hidden, out, 1))

        self.heatmap, self.size, self.offset = branch(n_classes), branch(2), branch(2)
        nn.init.constant_(self.heatmap[-1].bias, -2.19)  # CenterNet's prior: sigmoid = 0.1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heatmap": self.heatmap(x), "size": F.softplus(self.size(x)) * 4.0,
                "offset": torch.sigmoid(self.offset(x))}


def fold_time(fn: nn.Module, x_seq: torch.Tensor) -> torch.Tensor:
    """Apply a stateless module to every bin of ``[T, B, ...]`` at once."""
    t_steps, b = x_seq.shape[:2]
    y = fn(x_seq.flatten(0, 1))
    return y.view(t_steps, b, *y.shape[1:])


def unfold_time(out: dict[str, torch.Tensor], t_steps: int, b: int) -> dict[str, torch.Tensor]:
    """Head outputs ``[T * B, ...]`` -> ``[B, T, ...]``."""
    return {k: v.view(t_steps, b, *v.shape[1:]).transpose(0, 1) for k, v in out.items()}


class HsVTDetector(nn.Module):
    """Event frames ``[B, T, P, H, W]`` -> per-bin CenterNet maps ``[B, T, ..., H/4, W/4]``."""

    stride = 4

    def __init__(self, in_channels: int = 2, n_classes: int = 2, dim: int = 32, heads: int = 2, window: int = 4,
                 memory: bool = True) -> None:
        super().__init__()
        self.spatial = SpatialModule(in_channels, dim, heads, window)
        self.temporal = SpikingTemporal(dim, dim, memory=memory)
        self.head = CenterHead(2 * dim, n_classes)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        x_seq = fold_time(self.spatial, frames.transpose(0, 1))
        s_seq = self.temporal(x_seq)
        fused = torch.cat([x_seq, s_seq], dim=2)
        return unfold_time(self.head(fused.flatten(0, 1)), frames.shape[1], frames.shape[0])


class HsVTFeatures(nn.Module):
    """The classification backbone: ``[B, P*T, H, W]`` -> ``[B, 2 * dim]`` (bins read from the channels)."""

    def __init__(self, input_shape: tuple[int, ...], dim: int = 32, heads: int = 2, window: int = 4) -> None:
        super().__init__()
        channels = input_shape[0]
        self.polarities = 2 if channels % 2 == 0 else channels
        self.spatial = SpatialModule(self.polarities, dim, heads, window)
        self.temporal = SpikingTemporal(dim, dim)
        self.feature_dim = 2 * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        frames = x.reshape(b, c // self.polarities, self.polarities, h, w).transpose(0, 1)
        x_seq = fold_time(self.spatial, frames)
        fused = torch.cat([x_seq, self.temporal(x_seq)], dim=2)
        return fused.mean(dim=(-2, -1)).mean(0)


def attention_macs(model: nn.Module) -> float:
    """The attention products' multiply-accumulates of ``model``'s last forward (all windows, all samples)."""
    return sum(m.matmul_macs for m in model.modules() if isinstance(m, WindowAttention))
