"""``taaf``: TAAF's temporal adaptive balanced fusion loss on an audio-visual fusion extractor
(``adapters/nets/fusion.py``, ``model=taaf``); ``ogm-ge`` (``components/ogm_ge.py``), the gradient modulation it is
compared with, shares its helpers.

``taaf`` follows Shen, Xie, Xu, Pan, Tang, Chen (ACM MM 2025, arXiv 2505.14535), whose abstract says the attention
scores of the fused features "modulate each modality's learning" so that the dominant one does not monopolise the
optimisation; the exact loss is not public. The choice made here, in two parts:

- a balanced loss term: each modality's per-step logits (the classifier applied to that modality's features alone)
  get a cross-entropy weighted, per sample and step, by ``1 - a[t, m]``, the attention that modality did *not*
  get there; so the steps where a modality was ignored are the ones where it is taught most (weight ``weight``);
- a gradient modulation by the shares: after backward, the modality with the larger mean attention share s gets
  its encoder's gradients scaled by ``1 - tanh(alpha (2 s - 1))`` (OGM-GE's form, with the attention share in
  place of OGM-GE's confidence ratio), the other keeps its own.

Both read the fusion extractor being trained (the newest one of the expandable network) and its classifier block
(the last ``feature_dim`` columns of the strategy's classifier), so they serve ``der`` and ``alade-snn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.nets.fusion import MODALITIES, FusionNet
from lifelong.incremental.learner import Component, RunContext, TrainingState
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register


@dataclass
class BalanceConfig:
    """Options of ``taaf`` and ``ogm-ge`` (``--set taaf.alpha=0.5``)."""

    alpha: float = 0.3  # strength of the gradient modulation
    weight: float = 1.0  # weight of taaf's balanced loss term (unused by ogm-ge)
    noise: bool = True  # ogm-ge's Gaussian noise (GE); unused by taaf

    def validate(self) -> None:
        if self.alpha < 0 or self.weight < 0:
            raise ValueError(f"alpha and weight must be non-negative, got {self.alpha}, {self.weight}")


def training_fusion(model: nn.Module) -> tuple[FusionNet, torch.Tensor]:
    """The fusion extractor being trained and the classifier columns over its features."""
    nets = [m for m in model.modules() if isinstance(m, FusionNet)]
    live = [m for m in nets if any(p.requires_grad for p in m.parameters())]
    classifier = getattr(model, "classifier", None)
    if not live or classifier is None:
        raise UserError("the taaf and ogm-ge components need an audio-visual fusion model (model=taaf, av-concat or "
                        "av-sum, on split-av-digits) with a classifier (der, alade-snn)")
    net = live[-1]
    return net, classifier.weight[:, -net.feature_dim:]


def scale_gradients(params: list[nn.Parameter], k: float, noise: bool, generator: torch.Generator | None) -> None:
    """Multiply the gradients by ``k``; with ``noise``, add N(0, std of each gradient) (OGM-GE's GE)."""
    for p in params:
        if p.grad is None:
            continue
        p.grad.mul_(k)
        if noise and p.grad.numel() > 1:
            std = float(p.grad.std())
            if std > 0:
                p.grad.add_(torch.randn(p.grad.shape, generator=generator).to(p.grad) * std)


class _Balance(Component):
    """Shared bookkeeping: the coefficients applied, per modality, for ``summary``."""

    def __init__(self, config: BalanceConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.coefficients: dict[str, list[float]] = {m: [] for m in MODALITIES}
        self._k: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(int(context.seed) * 7919 + 1)

    def after_backward(self, state: TrainingState) -> None:
        if not self._k:
            return
        net, _ = training_fusion(state.model)
        params = net.modality_parameters()
        for m, k in self._k.items():
            self.coefficients[m].append(k)
            scale_gradients(params[m], k, self._noise(), self.generator)
        self._k = {}

    def _noise(self) -> bool:
        return False

    def summary(self) -> dict[str, Any]:
        return {f"mean_coefficient_{m}": (sum(v) / len(v) if v else None) for m, v in self.coefficients.items()}


@register("component", "taaf", config=BalanceConfig,
          summary="TAAF's temporal adaptive balanced fusion loss: attention-weighted unimodal terms + modulation")
class TemporalBalance(_Balance):
    """TAAF's balanced loss and attention-share gradient modulation (see the module docstring)."""

    excludes = ("ogm-ge",)

    def extra_loss(self, state: TrainingState) -> torch.Tensor | None:
        net, weight = training_fusion(state.model)
        attention = net.last.get("attention")
        if attention is None:
            raise UserError("the taaf component needs model=taaf (the attention fusion); av-concat and av-sum have no "
                            "attention scores")
        y = state.y
        uni = net.unimodal_logits(weight)
        T, B = attention.shape[:2]
        loss = attention.new_zeros(())
        for i, m in enumerate(MODALITIES):
            ce = F.cross_entropy(uni[m].reshape(T * B, -1), y.repeat(T), reduction="none").view(T, B)
            loss = loss + ((1.0 - attention[..., i].detach()) * ce).mean()
        share = attention.detach().mean(dim=(0, 1))
        dominant = int(share.argmax())
        s = float(share[dominant])
        self._k = {MODALITIES[dominant]: 1.0 - float(torch.tanh(torch.tensor(self.config.alpha * (2 * s - 1))))}
        return self.config.weight * loss
