"""The expandable network of DER (Yan, Xie and He, CVPR 2021) and the extractors it grows from.

- ``ExpandableNet``: one feature extractor per task, the features of all extractors concatenated, a classifier
  over every seen class rebuilt at each task, and an auxiliary head (1 + new classes) on the newest extractor;
  older extractors are frozen (no gradients, batch norm in eval mode). Extractors return time-major features
  ``[T, B, F]``: T = 1 for an ordinary network, the number of time steps for a spiking one, so one class
  serves both.
- The extractor vocabulary (``model`` of the strategies that grow this network): the architectures
  ``resnet-tiny`` (8x8 digits: 16-wide stem, two one-block stages), ``resnet-mnist`` (28x28: stride-2 16-wide
  stem, one-block stages at 16/32/64) and ``resnet-cifar`` (64-wide stem, [3, 3, 2] blocks at 128/256/512) of
  ``adapters/nets/spiking.py``, built with ReLU neurons or, given a
  ``NeuronConfig``, as spiking networks of LIF neurons over T steps; ``auto`` picks one by input size. The
  platform backbones (``mlp``, ``cnn-small``, ...; ``adapters/nets/backbones.py``) can serve as ordinary extractors.
  ``tcn-audio`` (``adapters/nets/spiking_audio.py``) takes encoded spike trains ``[T, B, lines]`` instead of
  images; ``ExpandableNet``'s ``encoder`` (a spike encoder, given by the strategy) makes them from waveforms
  once for all extractors.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lifelong.adapters.nets.backbones import BACKBONES
from lifelong.adapters.nets.spiking import NeuronConfig, SpikingResNet
from lifelong.adapters.nets.fusion import FUSIONS, FusionNet
from lifelong.adapters.nets.spiking_audio import SpikingAudioNet
from lifelong.platform.errors import UserError

#: the ResNet architectures an extractor may be, each with a ReLU and a spiking version, and their layouts in
#: ``adapters/nets/spiking.py``
RESNET_ARCHITECTURES: dict[str, str] = {"resnet-tiny": "tiny", "resnet-mnist": "mnist", "resnet-cifar": "cifar"}
#: the extractors for spike trains over time (``[T, B, lines]`` from a spike encoder), ReLU or spiking
TEMPORAL_ARCHITECTURES: tuple[str, ...] = ("tcn-audio",)
#: the audio-visual extractors (``adapters/nets/fusion.py``); their input shape is ``(C, H, W, lines, steps)``: the
#: image's and the audio spike train's
FUSION_ARCHITECTURES: tuple[str, ...] = FUSIONS


def resolve_architecture(name: str, input_shape: tuple[int, ...]) -> str:
    """``name``, or for ``auto`` the ResNet for the input size: ``resnet-tiny`` up to 8x8, ``resnet-mnist`` up
    to 28x28, else ``resnet-cifar``; ``tcn-audio`` for encoded spike trains (``(lines, steps)`` inputs)."""
    if name != "auto":
        return name
    if len(input_shape) == 2:
        return "tcn-audio"
    if len(input_shape) == 5:
        return "taaf"
    side = max(input_shape[1:]) if len(input_shape) > 1 else 0
    return "resnet-tiny" if side <= 8 else "resnet-mnist" if side <= 28 else "resnet-cifar"


def check_architecture(name: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the allowed values unless ``name`` is ``auto`` or one of ``allowed``."""
    if name == "auto" or name in allowed:
        return
    renamed = {layout: arch for arch, layout in RESNET_ARCHITECTURES.items()}
    hint = f" ({name!r} is now {renamed[name]!r})" if name in renamed and renamed[name] in allowed else ""
    raise ValueError(f"model: {name!r} is not allowed; allowed values: auto, {', '.join(allowed)}{hint}")


class TimeMajor(nn.Module):
    """Give a ``[B, F]`` extractor the time-major output ``[1, B, F]`` the expandable network expects."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).unsqueeze(0)


def extractor_factory(
    name: str,
    input_shape: tuple[int, ...],
    *,
    width_mult: float = 1.0,
    neuron: NeuronConfig | None = None,
    T: int = 1,
) -> tuple[Callable[[], nn.Module], int]:
    """How to build one extractor of architecture ``name`` (``auto`` resolved by input size), and its width.

    Without ``neuron`` the ResNets have ReLU neurons (T = 1); with it they are spiking, LIF neurons over ``T``
    steps. Platform backbones exist in the ordinary version only. Building the factory builds one extractor
    to read its feature width.
    """
    name = resolve_architecture(name, input_shape)
    if (name in FUSION_ARCHITECTURES) != (len(input_shape) == 5):
        raise UserError(f"model: {name} does not fit the stream: the fusions {', '.join(FUSION_ARCHITECTURES)} take "
                        f"audio-visual streams (split-av-digits), and only they do; the inputs are {input_shape}")
    if name in FUSION_ARCHITECTURES:

        def make_fusion() -> nn.Module:
            return FusionNet(name, input_shape[0], input_shape[3], input_shape[4],
                             width=max(1, int(round(64 * width_mult))), neuron=neuron)

        return make_fusion, make_fusion().feature_dim
    if name in TEMPORAL_ARCHITECTURES:
        if len(input_shape) != 2:
            raise UserError(f"model: {name} needs encoded spike trains (set encoder=NAME on an audio stream); the "
                            f"stream's inputs are {input_shape}")

        def make_temporal() -> nn.Module:
            return SpikingAudioNet(input_shape[0], width=max(1, int(round(64 * width_mult))), neuron=neuron)

        return make_temporal, make_temporal().feature_dim
    if len(input_shape) == 2:
        raise UserError(f"model: {name} takes images; encoded spike trains need model=tcn-audio (or auto)")
    if name in RESNET_ARCHITECTURES:
        layout = RESNET_ARCHITECTURES[name]
        if len(input_shape) != 3:
            raise UserError(f"model: {name} needs image inputs (C, H, W); the stream's inputs are {input_shape}")

        def make() -> nn.Module:
            if neuron is None:
                return SpikingResNet(input_shape[0], layout=layout, width_mult=width_mult, spiking=False)
            return SpikingResNet(input_shape[0], layout=layout, width_mult=width_mult, T=T, neuron=neuron)

        return make, make().feature_dim
    if neuron is not None or name not in BACKBONES:
        allowed = list(RESNET_ARCHITECTURES) + ([] if neuron is not None else list(BACKBONES))
        raise UserError(f"model: unknown extractor {name!r}; allowed values: auto, {', '.join(allowed)}")

    def make_backbone() -> nn.Module:
        return TimeMajor(BACKBONES[name](input_shape)[0])

    return make_backbone, BACKBONES[name](input_shape)[1]


class ExpandableNet(nn.Module):
    """DER's network: one extractor per task, concatenated features, a classifier over all seen classes.

    Extractors return time-major features ``[T, B, F]`` (T = 1 for an ordinary network), so the same class
    serves spiking and ordinary extractors; logits are ``[T, B, classes]`` (the classifier is applied at every
    time step) and the prediction averages them over time.
    """

    def __init__(self, make_extractor: Callable[[], nn.Module], feature_dim: int, bias: bool = True,
                 encoder: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        #: turns raw inputs into what the extractors take (a spike encoder: waveforms -> ``[T, B, lines]``); no
        #: parameters, not part of the state dict
        self.encoder = encoder
        self.make_extractor = make_extractor
        self.feature_dim = feature_dim
        self.bias = bias
        self.extractors = nn.ModuleList()
        self.classifier: nn.Linear | None = None
        self.aux_classifier: nn.Linear | None = None
        self.task_sizes: list[int] = []

    @property
    def n_classes(self) -> int:
        return sum(self.task_sizes)

    @property
    def n_tasks(self) -> int:
        return len(self.task_sizes)

    def add_task(self, n_new: int, *, copy_previous: bool = True, reuse_old_classifier: bool = False) -> None:
        """Grow by one extractor (a copy of the last one) and ``n_new`` classes; freeze the older extractors."""
        device = next(self.parameters()).device if any(True for _ in self.parameters()) else torch.device("cpu")
        extractor = self.make_extractor().to(device)
        if copy_previous and len(self.extractors):
            extractor.load_state_dict(self.extractors[-1].state_dict())
        for old in self.extractors:
            old.requires_grad_(False)
            old.eval()
        self.extractors.append(extractor)
        old_classes, old_dim = self.n_classes, self.feature_dim * (len(self.extractors) - 1)
        self.task_sizes.append(n_new)
        classifier = nn.Linear(self.feature_dim * len(self.extractors), self.n_classes, bias=self.bias).to(device)
        if reuse_old_classifier and self.classifier is not None:
            with torch.no_grad():
                classifier.weight[:old_classes, :old_dim] = self.classifier.weight
                if self.bias:
                    classifier.bias[:old_classes] = self.classifier.bias
        self.classifier = classifier
        self.aux_classifier = (
            nn.Linear(self.feature_dim, n_new + 1, bias=self.bias).to(device) if len(self.extractors) > 1 else None
        )

    def train(self, mode: bool = True) -> "ExpandableNet":
        super().train(mode)
        for old in list(self.extractors)[:-1]:
            old.eval()  # frozen extractors keep their batch-norm statistics
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The extractors' input: ``x`` itself, or the encoder's spike trains of ``x``."""
        return x if self.encoder is None else self.encoder(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated time-major features ``[T, B, F * n_tasks]``."""
        x = self.encode(x)
        feats = []
        for i, extractor in enumerate(self.extractors):
            if i < len(self.extractors) - 1:
                with torch.no_grad():
                    feats.append(extractor(x))
            else:
                feats.append(extractor(x))
        return torch.cat(feats, dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.classifier is None:
            raise RuntimeError("the network has no task yet; train an experience first")
        feats = self.features(x)
        out = {"features": feats, "logits": self.classifier(feats)}
        if self.aux_classifier is not None:
            out["aux_logits"] = self.aux_classifier(feats[..., -self.feature_dim :])
        return out
