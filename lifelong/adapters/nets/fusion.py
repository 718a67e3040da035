"""Audio-visual spiking extractors: one spiking encoder per modality and a fusion of their per-step features.

Paper: Shen, Xie, Xu, Pan, Tang, Chen, "Spiking Neural Networks with Temporal Attention-Guided Adaptive Fusion for
imbalanced Multi-modal Learning" (TAAF, ACM MM 2025, arXiv 2505.14535); no code is public. What is taken from its
abstract: a TAAF module gives the fused spiking features of every time step an importance score, the scored
features are integrated over time, and a loss uses the scores to balance the modalities' learning (that loss is
the ``taaf`` component, ``components/taaf.py``). What this module fills in, as choices:

- the encoders: the image is direct-coded into a spiking ResNet (``resnet-tiny`` of ``spiking.py``, over the same
  T steps as the audio) and the audio spike train (from a spike encoder, ``lifelong/encoders/``) goes through the
  temporal network of ``spiking_audio.py``; each side is projected to ``width`` features per step;
- ``taaf``: at each step t an attention network (a linear layer, tanh, a linear layer) scores both modalities'
  features from their concatenation, a softmax over the two gives the shares ``a[t, m]``, and the fused feature is
  ``sum_m a[t, m] f[t, m]``; the classifier of the strategy reads it at every step and the logits are averaged
  over time (the integration over time);
- the static fusions on the same encoders: ``av-concat`` (the two projected features side by side) and ``av-sum``
  (their sum).

The network keeps its last forward's per-modality features and shares in ``last`` (``{"features": {"image": ...,
"audio": ...}, "attention": [T, B, 2] or None}``) so that a balancing component can read them, and the names of
each modality's parameters (``modality_parameters``) so that gradient modulation can scale them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lifelong.adapters.nets.spiking import NeuronConfig, SpikingResNet
from lifelong.adapters.nets.spiking_audio import SpikingAudioNet

FUSIONS: tuple[str, ...] = ("taaf", "av-concat", "av-sum")
MODALITIES: tuple[str, ...] = ("image", "audio")


class FusionNet(nn.Module):
    """(image ``[B, C, H, W]``, audio spikes ``[T, B, lines]``) -> fused per-step features ``[T, B, F]``."""

    def __init__(self, fusion: str, image_channels: int, audio_lines: int, steps: int, *, width: int = 64,
                 neuron: NeuronConfig | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: {fusion!r} is not allowed; allowed values: {', '.join(FUSIONS)}")
        self.fusion = fusion
        self.steps = steps
        self.image = SpikingResNet(image_channels, layout="tiny", T=steps, neuron=neuron, spiking=neuron is not None)
        self.audio = SpikingAudioNet(audio_lines, width=width, neuron=neuron)
        self.image_proj = nn.Linear(self.image.feature_dim, width)
        self.audio_proj = nn.Linear(self.audio.feature_dim, width)
        self.attention = nn.Sequential(nn.Linear(2 * width, width), nn.Tanh(), nn.Linear(width, 2)) \
            if fusion == "taaf" else None
        self.feature_dim = 2 * width if fusion == "av-concat" else width
        self.last: dict[str, Any] = {}

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each modality's encoder and projection parameters (what gradient modulation scales)."""
        return {"image": [*self.image.parameters(), *self.image_proj.parameters()],
                "audio": [*self.audio.parameters(), *self.audio_proj.parameters()]}

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, spikes = inputs
        f_img = self.image(image)  # [T_img, B, F]; T_img is 1 for the ReLU twin
        f_aud = self.audio_proj(self.audio(spikes))  # [T, B, width]
        f_img = self.image_proj(f_img).expand(f_aud.shape[0], -1, -1) if f_img.shape[0] == 1 else self.image_proj(f_img)
        attention = None
        if self.fusion == "taaf":
            attention = torch.softmax(self.attention(torch.cat([f_img, f_aud], dim=-1)), dim=-1)  # [T, B, 2]
            fused = attention[..., :1] * f_img + attention[..., 1:] * f_aud
        elif self.fusion == "av-sum":
            fused = f_img + f_aud
        else:
            fused = torch.cat([f_img, f_aud], dim=-1)
        self.last = {"features": {"image": f_img, "audio": f_aud}, "attention": attention}
        return fused

    def unimodal_logits(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each modality's per-step logits ``[T, B, classes]`` from the last forward, read by the classifier
        ``weight`` over this network's features (its own half of it for ``av-concat``, as OGM-GE does)."""
        feats = self.last.get("features")
        if not feats:
            raise RuntimeError("no forward yet: unimodal logits come from the last forward's features")
        if self.fusion == "av-concat":
            half = weight.shape[1] // 2
            return {"image": feats["image"] @ weight[:, :half].T, "audio": feats["audio"] @ weight[:, half:].T}
        return {m: feats[m] @ weight.T for m in MODALITIES}

    def __getstate__(self) -> dict[str, Any]:  # a copy (teacher, clone) drops the last forward's graph
        state = dict(self.__dict__)
        state["last"] = {}
        return state
