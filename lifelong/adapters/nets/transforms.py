"""Input transforms that let any image stream feed a backbone of another resolution or channel count.

The streams of the platform yield tensors in their own shape (``split-digits``: 1x8x8 grey values in [0, 1];
CIFAR: 3x32x32). Pre-trained vision transformers expect a fixed size (224 for ViT-B/16, 32 for the tiny test
configuration), three channels and their own normalisation. Rather than rebuilding every data set with an
Avalanche transform, the pre-trained-backbone strategies call :class:`ImageFit` on each batch, on the device:
undoing the stream's own normalisation when it declares one (``stream.info["normalization"] = {"mean": [...],
"std": [...]}``; see :func:`stream_normalization`), channel conversion (grey -> RGB by repetition, RGB -> grey by the mean), bilinear resizing (antialiased when
shrinking) and per-channel normalisation. It is a plain ``nn.Module`` without parameters, so it is part of no
state dict and costs nothing to save.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# open_clip's OpenAI statistics (open_clip.constants), repeated here so this module imports without open_clip.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _stat(values: Sequence[float] | None) -> torch.Tensor | None:
    """Per-channel statistics as a float32 ``(1, C, 1, 1)`` tensor that broadcasts over a batch."""
    return None if values is None else torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class ImageFit(nn.Module):
    """Map a batch ``(B, C, H, W)`` to ``(B, channels, size, size)``, normalised with ``mean``/``std``."""

    def __init__(
        self,
        size: int | tuple[int, int],
        channels: int = 3,
        mean: Sequence[float] | None = CLIP_MEAN,
        std: Sequence[float] | None = CLIP_STD,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        # a stream that already normalised its images with its own statistics: undo that first. Buffers (not
        # saved), so ``.to(device)`` moves them with the module and no batch pays a host-to-device copy.
        self.register_buffer("input_mean", _stat(input_mean), persistent=False)
        self.register_buffer("input_std", _stat(input_std), persistent=False)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.channels = channels
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None:
            if len(mean) != channels or len(std) != channels:  # type: ignore[arg-type]
                raise ValueError(f"mean/std need {channels} values, got {len(mean)} and {len(std)}")  # type: ignore[arg-type]
            self.register_buffer("mean", _stat(mean), persistent=False)
            self.register_buffer("std", _stat(std), persistent=False)
        else:
            self.mean = None  # type: ignore[assignment]
            self.std = None  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (B, H, W): one grey channel
            x = x.unsqueeze(1)
        if x.dim() != 4:
            raise ValueError(f"ImageFit expects images (B, C, H, W), got shape {tuple(x.shape)}")
        x = x.float()
        if self.input_mean is not None and self.input_std is not None:
            x = x * self.input_std.to(x.device) + self.input_mean.to(x.device)
        c = x.shape[1]
        if c != self.channels:
            if c == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"cannot convert {c}-channel images to {self.channels} channels")
        if tuple(x.shape[-2:]) != self.size:
            shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=shrink)
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x

    def extra_repr(self) -> str:
        return f"size={self.size}, channels={self.channels}"


def stream_normalization(info: dict[str, Any]) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """The (mean, std) a stream normalised its images with, from ``stream.info["normalization"]``, else (None, None).

    Pre-trained backbones need images in [0, 1] normalised with THEIR statistics, so the stream's own
    normalisation has to be undone first.
    """
    norm = info.get("normalization") or info.get("normalisation")
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        return tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    return None, None


def iterate_batches(
    dataset: Any, batch_size: int, *, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of an Avalanche experience's data set, with or without task labels.

    Label-only streams yield ``(x, y)`` and task-aware ones ``(x, y, t)``; the pre-trained-backbone strategies
    never use the task label, so both look the same from here. Shuffling is seeded for reproducible runs.
    """
    from torch.utils.data import DataLoader

    # a CPU generator on purpose: the sampler draws its permutation on the CPU, so the order is the same on any device
    generator = torch.Generator(device="cpu").manual_seed(seed) if shuffle else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
    for batch in loader:
        yield batch[0], torch.as_tensor(batch[1]).long()
