"""The classic class-incremental baselines, registered from Avalanche 0.6.0.

naive (fine-tuning), joint (Avalanche's ``Cumulative``: retrain on everything seen so far, the upper bound of
an incremental run), ewc, lwf, replay, icarl, gdumb and dark-er (Avalanche's ``DER`` is Dark Experience
Replay, not the Dynamically Expandable Representation that ALADE-SNN builds on, hence the name). The bridge in
``_avalanche`` fixes what Avalanche gets wrong on label-only streams; the defaults here are sized for
``split-digits`` on two CPU cores and every replay method shares the same memory budget (``mem_size``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import nn

from lifelong.adapters.nets.backbones import build_backbone
from lifelong.incremental import distributed
from lifelong.incremental.distributed import OutsideModuleTree, shard_indices
from lifelong.incremental.learner import ComposableConfig, StrategyConfig
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._avalanche import (
    AvalancheLearner,
    epoch_lr_schedule,
    silent_evaluator,
    trainable_only,
    with_task_labels,
)

# distributed_safe: trained with DDP under torchrun (tested). LwF, EWC and GDumb deep-copy, re-create or
# unwrap the model inside Avalanche, which a DDP wrapper does not survive, so they run in a single process
# (iCaRL has the same problem and its own way round it, below).
_DDP = Capabilities(distributed_safe=True)
_SINGLE = Capabilities()
_REPLAY_DDP = Capabilities(uses_replay_memory=True, distributed_safe=True)
# naive and replay call training components (``components=[...]``, ``loss=tet``; incremental/learner.py)
_DDP_COMPONENTS = Capabilities(distributed_safe=True, accepts_components=True)
_REPLAY_DDP_COMPONENTS = Capabilities(uses_replay_memory=True, distributed_safe=True, accepts_components=True)
_REPLAY_SINGLE = Capabilities(uses_replay_memory=True)


@dataclass
class NaiveConfig(ComposableConfig):
    """Plain fine-tuning on each experience in turn."""


@register("strategy", "naive", config=NaiveConfig, summary="fine-tune on each experience (lower bound)", capabilities=_DDP_COMPONENTS)
class Naive(AvalancheLearner):
    strategy_class = "avalanche.training:Naive"


@dataclass
class JointConfig(StrategyConfig):
    """Retrain on the union of all experiences seen so far.

    ``lr_milestones``: epochs (of each experience) at which the rate is multiplied by ``lr_gamma``, as DER's
    step schedule; without one the last epoch's weights are those of a rate still at ``lr``, and an upper bound
    measured that way can fall below the methods it bounds (docs/fashion-mnist.md).
    """

    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1

    def validate(self) -> None:
        super().validate()
        if any(not isinstance(m, int) or isinstance(m, bool) or not 0 < m < self.epochs for m in self.lr_milestones):
            raise ValueError(f"lr_milestones: {self.lr_milestones!r} must be whole epochs between 1 and "
                             f"epochs - 1 = {self.epochs - 1}")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise ValueError(f"lr_milestones: {self.lr_milestones!r} must be increasing, without repeats")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")


@register("strategy", "joint", config=JointConfig, summary="cumulative training on all data seen so far (upper bound)", capabilities=_DDP)
class Joint(AvalancheLearner):
    strategy_class = "avalanche.training:Cumulative"
    state_attributes = ("clock", "dataset")

    def strategy_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {"plugins": [epoch_lr_schedule(self.optimizer, c.lr_milestones, c.lr_gamma)]} if c.lr_milestones else {}


@dataclass
class EWCConfig(StrategyConfig):
    ewc_lambda: float = 100.0
    mode: Literal["separate", "online"] = "separate"
    decay_factor: float = 0.9


@register("strategy", "ewc", config=EWCConfig, summary="elastic weight consolidation (Kirkpatrick et al. 2017)", capabilities=_SINGLE)
class EWC(AvalancheLearner):
    strategy_class = "avalanche.training:EWC"

    def strategy_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {"ewc_lambda": c.ewc_lambda, "mode": c.mode, "decay_factor": c.decay_factor if c.mode == "online" else None}


@dataclass
class LwFConfig(StrategyConfig):
    alpha: float = 1.0
    temperature: float = 2.0


@register("strategy", "lwf", config=LwFConfig, summary="learning without forgetting (Li & Hoiem 2016)", capabilities=_SINGLE)
class LwF(AvalancheLearner):
    strategy_class = "avalanche.training:LwF"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"alpha": self.config.alpha, "temperature": self.config.temperature}


@dataclass
class ReplayConfig(ComposableConfig):
    mem_size: int = 200  # samples the memory holds (in all, over every class seen)


@register("strategy", "replay", config=ReplayConfig, summary="experience replay with a class-balanced memory", capabilities=_REPLAY_DDP_COMPONENTS)
class Replay(AvalancheLearner):
    strategy_class = "avalanche.training:Replay"

    def strategy_kwargs(self) -> dict[str, Any]:
        from avalanche.training.plugins import ReplayPlugin
        from avalanche.training.storage_policy import ClassBalancedBuffer

        # Avalanche's default splits the memory by experience; class-balanced is the CIL standard.
        mem_size = self.local_memory(self.config.mem_size)
        buffer = ClassBalancedBuffer(max_size=mem_size, adaptive_size=True)
        return {"mem_size": mem_size, "plugins": [ReplayPlugin(mem_size, storage_policy=buffer)]}

    def build_strategy(self) -> Any:
        strategy = super().build_strategy()
        # Replay's constructor adds its own ReplayPlugin too: keep only the class-balanced one.
        from avalanche.training.plugins import ReplayPlugin

        replay = [p for p in strategy.plugins if isinstance(p, ReplayPlugin)]
        for extra in replay[1:]:
            strategy.plugins.remove(extra)
        return strategy


@dataclass
class GDumbConfig(StrategyConfig):
    mem_size: int = 200  # samples the memory holds (in all, over every class seen)


@register("strategy", "gdumb", config=GDumbConfig, summary="greedy class-balanced memory, retrained from scratch (Prabhu et al. 2020)", capabilities=_REPLAY_SINGLE)
class GDumb(AvalancheLearner):
    strategy_class = "avalanche.training:GDumb"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"mem_size": self.config.mem_size}


@dataclass
class DarkERConfig(StrategyConfig):
    mem_size: int = 200  # samples the memory holds (in all, over every class seen)
    alpha: float = 0.1
    beta: float = 0.5


@register("strategy", "dark-er", config=DarkERConfig, summary="dark experience replay, DER++ (Buzzega et al. 2020)", capabilities=_REPLAY_DDP)
class DarkER(AvalancheLearner):
    strategy_class = "avalanche.training:DER"
    state_attributes = ("clock", "storage_policy")

    def strategy_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {"mem_size": self.local_memory(c.mem_size), "alpha": c.alpha, "beta": c.beta}


@dataclass
class ICaRLConfig(StrategyConfig):
    mem_size: int = 200  # samples the memory holds (in all, over every class seen)
    fixed_memory: bool = True
    lr: float = 0.1
    weight_decay: float = 1e-5


class _ICaRLModel(nn.Module):
    """Avalanche's train/eval model for iCaRL, whose training forward goes through DDP under torchrun.

    Avalanche's iCaRL plugins read ``model.feature_extractor``, deep-copy the model as the distillation teacher
    and load state dicts into that copy; a DDP wrapper around the whole model survives none of this. So the
    model stays a plain module and only its training path (extractor, then training head) is wrapped, with the
    wrapper kept outside the module tree (``distributed.OutsideModuleTree``): deep copies and state dicts never
    see it, and forwards without gradients (the teacher, herding, the nearest-mean classifier) bypass it.
    """

    def __init__(self, feature_extractor: nn.Module, train_classifier: nn.Module, eval_classifier: nn.Module) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.train_classifier = train_classifier
        self.eval_classifier = eval_classifier
        self.ddp = OutsideModuleTree()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.ddp.wrapper is not None and torch.is_grad_enabled():
            return self.ddp.wrapper(x)
        features = self.feature_extractor(x)
        return self.train_classifier(features) if self.training else self.eval_classifier(features)


class _ShardForTraining:
    """Under torchrun, iCaRL gets the whole experience, so that herding and the class means see all of it on
    every rank, in the order one process sees it, and every rank keeps the same exemplars. This plugin (the
    last one, after iCaRL has appended its exemplars) cuts what is trained on down to the rank's shard of the
    experience and its shard of the exemplars, both padded to the same length on every rank. (Avalanche calls a
plugin's callbacks by name, so this one needs no base class.)"""

    def __init__(self, info: Any) -> None:
        self.info = info

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        n_new = len(strategy.experience.dataset)
        n_memory = len(strategy.adapted_dataset) - n_new
        keep = shard_indices(n_new, self.info) + [n_new + i for i in shard_indices(n_memory, self.info)]
        strategy.adapted_dataset = strategy.adapted_dataset.subset(keep)


@register("strategy", "icarl", config=ICaRLConfig, summary="iCaRL: herding memory, distillation, nearest-mean classifier (Rebuffi et al. 2017)", capabilities=_REPLAY_DDP)
class ICaRL(AvalancheLearner):
    """iCaRL needs the feature extractor and the head apart; Avalanche wraps them in a train/eval model."""

    strategy_class = "avalanche.training:ICaRL"

    def build_model(self) -> nn.Module:
        from avalanche.models import NCMClassifier

        net = build_backbone(self.config.model, self.context.stream.input_shape, self.context.stream.n_classes)
        return _ICaRLModel(net.features, net.classifier, NCMClassifier(normalize=True))

    def build_strategy(self) -> Any:
        from avalanche.training import ICaRL as AvalancheICaRL

        cfg = self.config
        strategy = trainable_only(AvalancheICaRL)(
            feature_extractor=self._model.feature_extractor,
            classifier=self._model.train_classifier,
            optimizer=self.optimizer,
            memory_size=cfg.mem_size,
            buffer_transform=None,
            fixed_memory=cfg.fixed_memory,
            train_mb_size=self.local_batch_size,
            train_epochs=cfg.epochs,
            eval_mb_size=cfg.eval_batch_size,
            device=self.context.device,
            evaluator=silent_evaluator(),
        )
        if self.context.distributed.enabled:
            strategy.plugins.append(_ShardForTraining(self.context.distributed))
        return strategy

    def distributed_model(self) -> nn.Module:
        """Our model in place of the TrainEvalModel Avalanche built around the same modules: it can run under DDP."""
        if self.context.distributed.enabled:
            train_path = nn.Sequential(self._model.feature_extractor, self._model.train_classifier)
            self._model.ddp.wrapper = distributed.wrap(train_path, self.context.distributed, self.context.device)
        return self._model

    def train_experience(self, experience: Any) -> None:
        # under torchrun iCaRL takes the whole experience and cuts its shard itself (see _ShardForTraining)
        experience = distributed.whole_experience(experience)
        # Avalanche 0.6.0's iCaRL still reads the class split from the deprecated ``experience.benchmark``.
        stream = self.context.stream
        patched = copy.copy(with_task_labels(experience))
        patched.benchmark = SimpleNamespace(
            n_classes_per_exp=[len(c) for c in stream.classes_per_experience],
            classes_order=list(range(stream.n_classes)),
        )
        self.train_avalanche(patched)
