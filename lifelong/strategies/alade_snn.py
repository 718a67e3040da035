"""``alade-snn``: Adaptive Logit Alignment in Dynamically Expandable Spiking Neural Networks.

Paper: Ni, Shen, Xu et al., AAAI 2025 (arXiv 2412.12696); the authors' code is the first commits of
HOOKke/PS-SNN. This module follows the paper and that code (usage, settings and results: docs/alade-snn.md):

- the network is ``der``'s expandable representation (``adapters/nets/expandable.py``) with spiking extractors: the
  spiking version of the ResNet ``model`` names (``adapters/nets/spiking.py``: LIF with tau 2, hard reset, triangle
  surrogate with gamma 1, direct encoding over T steps); a new bias-free classifier
  over the concatenated features is built at every task (old weights not copied) and applied at every step;
  prediction is the argmax of the logits averaged over time;
- representation stage, task t >= 1: loss = CE(time-averaged logits) + KD + auxiliary CE (weight 1), where
  KD = KL(softmax(old/2) || softmax(new[:, :C_old]/2)) summed over classes, averaged over the batch, no tau^2
  factor, teacher = the whole model after the previous task (``distillation``); the auxiliary head has
  1 + (new classes) outputs with all old classes as label 0 (``aux_loss``);
- OtoN suppression (``oton``): after every optimizer step the classifier block from the old extractors' features
  to the new classes' logits is set to zero, so new classes use only the new extractor; it is released in the
  fine-tuning stage;
- iCaRL herding memory with a fixed total budget;
- classifier fine-tuning after each task t >= 1: the classifier is re-initialised and trained alone (everything
  else frozen, eval mode) for ``finetune_epochs`` (30, lr 0.1, x0.1 at 15) on a class-balanced subset of the
  current data and the memory; with ``logit_alignment`` a scalar b is added to the new classes' logits inside
  the training loss from epoch ``alignment_start`` (15) on, and b is driven by the damped controller of the
  authors' ``finetune_clf_step_logits_ctrl`` (constants 8 and 4) on the gap between the mean target logit of
  new-class and old-class samples. Test time uses the raw logits. The learner is ``der``'s; everything above
  that ``der`` lacks is here: the spiking extractor, distillation (``_extra_loss``), OtoN
  (``_after_optimizer_step``) and the alignment (``AlignedLogits``, what ``_finetune_logits`` returns).

Where it departs or fills gaps:
- the teacher is not a deep copy: the old extractors are frozen (bit-identical, batch norm in eval mode), so the
  previous model is exactly "old extractors + the previous classifier", and only that classifier is kept;
- the fine-tuning set is drawn once per task from non-augmented samples and the classifier trains on their
  cached time-averaged features (exact for a linear classifier over frozen, eval-mode features);
- the tiny layout for 8x8 digits and the short schedules are the platform's, for CPUs; the paper's protocol is
  ``configs/alade-snn/cifar100-b0-10.yaml``; on sound (the spoken-word streams) a spike encoder
  (``encoder=NAME``, ``strategies/_encoding.py``) gives the spike trains and ``tcn-audio`` takes them, its time
  steps being the encoder's ``steps`` (``T`` is for direct-coded images); the TET loss (off for CIFAR-100 in the paper) is ``loss=tet``
  (``der``'s, per-time-step cross-entropy), and training components (``components=[...]``) run as in ``der``;
- ``neuron=relu`` (an addition, for measurement) builds the same extractors with ReLU instead of LIF neurons
  (T = 1) and changes nothing else: the same schedule, distillation, OtoN, alignment and classifier handling. It
  is the ANN twin that isolates what the spiking neuron costs and saves (``bench/alade_ablation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.nets.expandable import (
    FUSION_ARCHITECTURES,
    RESNET_ARCHITECTURES,
    TEMPORAL_ARCHITECTURES,
    extractor_factory,
)
from lifelong.adapters.nets.spiking import NeuronConfig, count_ops, record_spikes, spike_rates
from lifelong.incremental.learner import RunContext
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies.der import DERConfig, DERLearner, FinetuneLogits


@dataclass
class AladeSNNConfig(DERConfig):
    """Settings of ``alade-snn``; every ALADE component is one switch (``oton``, ``logit_alignment``,
    ``aux_loss``, ``distillation``) so an ablation is one ``--set``."""

    #: the architectures with a spiking version (``adapters/nets/expandable.py``); ``model`` may also be ``auto``
    MODELS: ClassVar[tuple[str, ...]] = (*RESNET_ARCHITECTURES, *TEMPORAL_ARCHITECTURES, *FUSION_ARCHITECTURES)

    model: str = "auto"  # the extractor, built spiking: resnet-tiny (8x8) | resnet-mnist | resnet-cifar | tcn-audio (sound); auto by input
    T: int = 4
    neuron: Literal["lif", "relu"] = "lif"  # relu: the ANN twin (T = 1), everything else unchanged
    surrogate: Literal["triangle", "sigmoid", "arctan"] = "triangle"
    surrogate_alpha: float = 0.0  # gamma of the triangle (alpha of the others); 0 = the surrogate's default
    tau: float = 2.0
    v_threshold: float = 1.0
    reset: Literal["hard", "soft"] = "hard"
    compile: bool = False
    oton: bool = True
    logit_alignment: bool = True
    aux_loss: bool = True
    distillation: bool = True
    kd_temperature: float = 2.0
    kd_weight: float = 1.0
    alignment_start: int = -1  # first fine-tuning epoch with the offset; -1 = the last fine-tuning milestone
    effect_factor: float = 8.0
    change_factor: float = 4.0
    reuse_old_classifier: bool = False
    classifier_bias: bool = False
    finetune_reinit: bool = True
    lr: float = 0.1
    # rate-coded spike features learn slowly per step: batches of 16 give a short schedule twice the steps
    batch_size: int = 16
    finetune_milestones: list[int] = field(default_factory=lambda: [15])

    def validate(self) -> None:
        super().validate()  # checks model against MODELS
        if self.T < 1:
            raise ValueError(f"T must be at least 1, got {self.T}")
        if self.neuron not in ("lif", "relu"):
            raise ValueError(f"neuron: {self.neuron!r} is not allowed; allowed values: 'lif', 'relu'")
        if self.tau <= 1.0:
            raise ValueError(f"tau must be greater than 1, got {self.tau}")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be positive, got {self.kd_temperature}")
        if self.surrogate_alpha < 0:
            raise ValueError(f"surrogate_alpha must be non-negative, got {self.surrogate_alpha}")


class LogitAlignmentController:
    """The damped controller of the offset b (the authors' ``finetune_clf_step_logits_ctrl``).

    Fed once per epoch with the mean target-class logit of new-class samples and of old-class samples, it moves
    b by the gap d = new - old when a gap appears (or flips sign), adds any growth of the gap, waits while the
    gap shrinks, and moves again by the remaining gap once the gap has shrunk by more than 1/``effect_factor``
    of its size at the last move and its per-epoch shrinkage has fallen below 1/``change_factor`` of the fastest
    shrinkage seen since then. A positive b raises the new classes' logits in the loss, so the classifier learns
    to lower them.
    """

    def __init__(self, effect_factor: float = 8.0, change_factor: float = 4.0) -> None:
        self.effect_factor = effect_factor
        self.change_factor = change_factor
        self.b = 0.0
        self.last_aug = False  # the direction of the last move: True = b was raised
        self.st_diff = 0.0  # the gap when b last moved
        self.last_diff = 0.0
        self.max_change = 1000.0
        self.history: list[float] = []

    def _settled(self, diff: float) -> bool:
        return (
            self.st_diff - diff > self.st_diff / self.effect_factor
            and self.last_diff - diff < self.max_change / self.change_factor
        )

    def update(self, avg_new: float, avg_old: float) -> float:
        """Take one epoch's mean target logits and return the new b."""
        if avg_new - avg_old > 0:
            diff = avg_new - avg_old
            if not self.last_aug:
                self.b += diff
                self.last_aug, self.max_change, self.st_diff = True, 0.0, diff
            elif self._settled(diff):
                self.b += diff
                self.max_change, self.st_diff = 0.0, diff
            elif self.st_diff < diff:
                self.b += diff - self.st_diff
                self.st_diff = diff
            else:
                self.max_change = max(self.last_diff - diff, self.max_change)
        else:
            diff = avg_old - avg_new
            if self.last_aug:
                self.b -= diff
                self.last_aug, self.max_change, self.st_diff = False, 0.0, diff
            elif self._settled(diff):
                self.b -= diff
                self.max_change, self.st_diff = 0.0, diff
            elif self.st_diff < diff:
                self.b -= diff - self.st_diff
                self.st_diff = diff
            else:
                self.max_change = max(self.last_diff - diff, self.max_change)
        self.last_diff = diff
        self.history.append(self.b)
        return self.b


class AlignedLogits(FinetuneLogits):
    """Adaptive logit alignment in the classifier stage: from epoch ``start`` on, the controller's offset b is
    added to the new classes' logits (classes ``known`` and up) inside the training loss, and the controller
    is fed each epoch's mean target logits; b is logged per epoch."""

    def __init__(self, controller: LogitAlignmentController, known: int, start: int) -> None:
        self.controller = controller
        self.known = known
        self.start = start

    def __call__(self, logits: torch.Tensor, epoch: int) -> torch.Tensor:
        if epoch < self.start or self.controller.b == 0.0:
            return logits
        offset = torch.zeros_like(logits)
        offset[:, self.known :] = self.controller.b
        return logits + offset

    def end_epoch(self, epoch: int, averages: tuple[float, float] | None) -> dict[str, float]:
        if averages is not None and epoch >= self.start:
            self.controller.update(*averages)
        return {"b": self.controller.b}


@register(
    "strategy",
    "alade-snn",
    config=AladeSNNConfig,
    summary="ALADE-SNN (Ni et al. 2025): spiking DER with distillation, OtoN and adaptive logit alignment",
    capabilities=Capabilities(uses_replay_memory=True, distributed_safe=True, accepts_components=True),
)
class AladeSNNLearner(DERLearner):
    """ALADE-SNN over a class-incremental stream (see the module docstring)."""

    config: AladeSNNConfig

    def __init__(self, config: AladeSNNConfig, context: RunContext) -> None:
        super().__init__(config, context)
        #: the previous model's classifier, the distillation teacher (None during the first task)
        self._teacher: dict[str, torch.Tensor] | None = None

    def _extractor_factory(self) -> tuple[Callable[[], nn.Module], int]:
        """The spiking version of the ResNet ``model`` names (``neuron=relu``: the ordinary one, T = 1)."""
        cfg = self.config
        if cfg.neuron == "relu":
            return extractor_factory(cfg.model, self.input_shape, width_mult=cfg.width_mult)
        neuron = NeuronConfig(
            tau=cfg.tau,
            v_threshold=cfg.v_threshold,
            reset=cfg.reset,
            surrogate=cfg.surrogate,
            alpha=cfg.surrogate_alpha or None,
            compile=cfg.compile,
        )
        return extractor_factory(cfg.model, self.input_shape, width_mult=cfg.width_mult, neuron=neuron, T=cfg.T)

    # -- the representation stage -------------------------------------------------------------------------
    def _add_task(self, n_new: int) -> None:
        self._teacher = self._snapshot_classifier() if self.model.n_tasks > 0 else None
        super()._add_task(n_new)
        self._suppress_old_to_new(self.model.n_classes - n_new)

    def _snapshot_classifier(self) -> dict[str, torch.Tensor]:
        """The previous model's classifier: with the frozen old extractors, it *is* the previous model."""
        assert self.model.classifier is not None
        snap = {"weight": self.model.classifier.weight.detach().clone()}
        if self.model.classifier.bias is not None:
            snap["bias"] = self.model.classifier.bias.detach().clone()
        return snap

    def _reset_heads(self) -> None:
        super()._reset_heads()
        self._suppress_old_to_new(self.model.n_classes - self.model.task_sizes[-1])

    def _extra_loss(self, out: dict[str, torch.Tensor], logits: torch.Tensor, yb: torch.Tensor, known: int) -> torch.Tensor:
        """Knowledge distillation from the previous model (old extractors + the previous classifier)."""
        if not self.config.distillation or self._teacher is None or known == 0:
            return logits.new_zeros(())
        tau = self.config.kd_temperature
        old_feats = out["features"][..., : self.model.feature_dim * (self.model.n_tasks - 1)].detach()
        with torch.no_grad():
            teacher = F.linear(old_feats, self._teacher["weight"], self._teacher.get("bias")).mean(0)
        kl = F.kl_div(
            F.log_softmax(logits[:, :known] / tau, dim=1), F.softmax(teacher / tau, dim=1), reduction="none"
        ).sum(1)
        return self.config.kd_weight * kl.mean()

    def _after_optimizer_step(self, known: int) -> None:
        self._suppress_old_to_new(known)

    def _suppress_old_to_new(self, known: int) -> None:
        """OtoN: zero the classifier weights from the old extractors' features to the new classes' logits."""
        if not self.config.oton or self.model.n_tasks < 2 or self.model.classifier is None:
            return
        old_dim = self.model.feature_dim * (self.model.n_tasks - 1)
        with torch.no_grad():
            self.model.classifier.weight[known:, :old_dim] = 0.0

    # -- fine-tuning -------------------------------------------------------------------------------------
    def _finetune_logits(self, known: int) -> FinetuneLogits:
        """With ``logit_alignment``, a fresh controller per task whose offset shifts the new classes' logits."""
        cfg = self.config
        if not cfg.logit_alignment:
            return FinetuneLogits()
        controller = LogitAlignmentController(cfg.effect_factor, cfg.change_factor)
        return AlignedLogits(controller, known, self._alignment_start())

    def _alignment_start(self) -> int:
        """The first fine-tuning epoch with the offset: ``alignment_start``, or -1 = the last milestone."""
        if self.config.alignment_start >= 0:
            return self.config.alignment_start
        return self.config.finetune_milestones[-1] if self.config.finetune_milestones else 0

    # -- results -----------------------------------------------------------------------------------------
    def _cost(self, probe: torch.Tensor) -> dict[str, Any]:
        self.model.eval()
        with record_spikes(self.model) as neurons:
            ops = count_ops(self.model, lambda: self.model(probe), len(probe))
        rates = spike_rates(neurons)
        spikes = sum(m.spike_count for m in neurons.values())
        total = sum(m.neuron_count for m in neurons.values())
        return {
            "ops": ops.as_dict(),
            "T": self.config.T if self.config.neuron == "lif" else 1,
            "neuron": self.config.neuron,
            "mean_spike_rate": spikes / total if total else 0.0,
            "spike_rates": rates,
        }
