"""``rkd``: distillation and evolving sparse structure together, after reverse-KD structure learning.

Follows Xu, Li, Fang, Shen, Liu, Tang, Pan, "Biologically inspired structure learning with reverse knowledge
distillation for spiking neural networks" (arXiv 2304.09500): a spiking student is trained from scratch with
knowledge distillation while its connections are pruned and regrown, so that it absorbs the teacher's knowledge
while searching for a sparse topology. The paper has no public code and its abstract does not say what makes the
distillation "reverse"; that part is not reproduced. What is built:

- the distillation of ``kd`` (every ``kd`` option, same defaults) and the fixed-density masks of ``esl`` (every
  ``esl`` option), in one component; it cannot be combined with ``kd`` or ``esl``;
- a distillation-aware prune score: at an update, each active weight is ranked by
  ``|w| / mean|w| + saliency * |w * g_kd| / mean|w * g_kd|`` (means over the layer's active weights), where
  ``g_kd`` is the gradient of the distillation term alone on the last batch (one extra backward of that term,
  on update steps only) and ``|w * g_kd|`` is the first-order change of the distillation loss if ``w`` were
  removed; weights that matter to matching the teacher survive even when small. With ``saliency=0`` (or before
  a ``previous`` teacher exists) this is ``esl``'s magnitude score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong.components.esl import ESLConfig, EvolutionarySparsity, maskable
from lifelong.components.kd import KDConfig, KnowledgeDistillation
from lifelong.incremental.learner import Component, RunContext, TrainingState
from lifelong.platform.registry import register


@dataclass
class RKDConfig(KDConfig, ESLConfig):
    """Options of ``rkd``: those of ``kd`` and ``esl``, and the weight of the distillation saliency."""

    saliency: float = 1.0

    def validate(self) -> None:
        KDConfig.validate(self)
        ESLConfig.validate(self)
        if self.saliency < 0:
            raise ValueError(f"saliency must be non-negative, got {self.saliency}")


class _DistillationAwareSparsity(EvolutionarySparsity):
    """``esl`` whose prune score adds the distillation saliency ``|w * g_kd|``."""

    def __init__(self, config: RKDConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.kd_grads: dict[str, torch.Tensor] = {}

    def prune_scores(self, name: str, p: torch.Tensor) -> torch.Tensor:
        magnitude = p.detach().abs().float()
        grad = self.kd_grads.get(name)
        if grad is None or self.config.saliency == 0:
            return magnitude
        active = self.trainable(name)
        saliency = (p.detach() * grad).abs().float()
        m_mean = magnitude[active].mean().clamp_min(1e-12)
        s_mean = saliency[active].mean().clamp_min(1e-12)
        return magnitude / m_mean + self.config.saliency * saliency / s_mean

    def after_step(self, state: TrainingState) -> None:
        super().after_step(state)
        self.kd_grads = {}


@register("component", "rkd", config=RKDConfig,
          summary="reverse-KD structure learning: kd and esl together, pruning by a distillation-aware score")
class DistilledSparseStructure(Component):
    """``kd`` and ``esl`` in one, with the distillation saliency in the prune score."""

    config: RKDConfig
    excludes = ("kd", "esl")

    def __init__(self, config: RKDConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.kd = KnowledgeDistillation(config, context)
        self.esl = _DistillationAwareSparsity(config, context)

    def before_experience(self, state: TrainingState) -> None:
        self.esl.before_experience(state)
        self.kd.before_experience(state)

    def extra_loss(self, state: TrainingState) -> torch.Tensor | None:
        loss = self.kd.extra_loss(state)
        if loss is not None and loss.requires_grad and self.esl._update_due() and self.config.saliency > 0:
            named = {n: p for n, p in maskable(state.model).items() if n in self.esl.owner}
            grads = torch.autograd.grad(loss, list(named.values()), retain_graph=True, allow_unused=True)
            self.esl.kd_grads = {n: g.detach() for n, g in zip(named, grads) if g is not None}
        return loss

    def after_backward(self, state: TrainingState) -> None:
        self.esl.after_backward(state)

    def after_step(self, state: TrainingState) -> None:
        self.esl.after_step(state)
        self.kd.after_step(state)

    def after_epoch(self, state: TrainingState) -> None:
        self.kd.after_epoch(state)

    def after_experience(self, state: TrainingState) -> None:
        self.esl.after_experience(state)
        self.kd.after_experience(state)

    def state_dict(self) -> dict[str, Any]:
        return {"kd": self.kd.state_dict(), "esl": self.esl.state_dict()}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.esl.load_state_dict(state.get("esl") or {}, model)
        self.kd.load_state_dict(state.get("kd") or {}, model)

    def summary(self) -> dict[str, Any]:
        return {"kd": self.kd.summary(), "esl": self.esl.summary()}
