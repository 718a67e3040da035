"""The bridge from Avalanche 0.6.0 strategies to the platform's ``Learner``, with Avalanche's pitfalls fixed.

What this fixes (measured on avalanche-lib 0.6.0, torch 2.14):
- strategies built without a criterion fail: every wrapper passes ``CrossEntropyLoss`` explicitly;
- LwF, Dark Experience Replay and others read ``mb_task_id`` from the last batch element, so on a stream built
  without task labels they read the class labels instead: experiences without task labels get a constant
  task label 0 before Avalanche sees them;
- ``make_optimizer`` puts every parameter (frozen ones included) into the optimizer: here only parameters
  with ``requires_grad`` are optimised (the optimizer itself comes from ``platform.learner.make_optimizer``);
- the default evaluator prints to stdout and ``save_checkpoint`` pickles the whole strategy with dill (which
  fails on torch 2.14): the runner evaluates by itself, and the strategy state is captured by
  ``AvalancheState`` (``_avalanche_state.py``) as tensors and plain values, so checkpoints load with
  ``weights_only=True``.

Training components (``incremental/learner.py``: ``Component``) reach an Avalanche strategy through
``ComponentPlugin``, which maps Avalanche's callbacks onto the component hooks; the same plugin captures the
per-time-step logits that ``loss=tet`` trains on.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from types import SimpleNamespace
from typing import Any, Iterator

import torch
from torch import nn

from lifelong.adapters.lm.text_backbone import DEFAULT_TEXT_MODEL, TextClassifierNet, is_text_model, load_text_backbone
from lifelong.adapters.nets.backbones import StepLogits, build_backbone
from lifelong.incremental import distributed
from lifelong.incremental.learner import (
    ComposableConfig,
    Learner,
    RunContext,
    StrategyConfig,
    TrainingState,
    build_components,
    known_classes,
    make_optimizer,
    tet_loss,
)
from lifelong.incremental.loggers import epoch_loss_plugin
from lifelong.platform.device import LossScaler, autocast
from lifelong.platform.errors import UserError
from lifelong.platform.quiet import quiet_avalanche
from lifelong.strategies._avalanche_state import AvalancheState, register_missing_buffers


def with_task_labels(experience: Any) -> Any:
    """The experience itself if its data carries task labels, else a copy whose samples carry task label 0."""
    dataset = experience.dataset
    if "targets_task_labels" in getattr(dataset, "_data_attributes", {}):
        return experience
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

    labelled = _make_taskaware_classification_dataset(dataset, targets=list(dataset.targets), task_labels=0)
    patched = copy.copy(experience)
    patched._dataset = labelled  # DatasetExperience keeps its data here behind a read-only property
    return patched


def trainable_only(strategy_class: type) -> type:
    """A subclass of ``strategy_class`` whose optimizer only ever holds parameters that require gradients,
    and whose forward, backward and step follow the config's ``precision`` (see ``use_precision``)."""

    class TrainableOnly(strategy_class):  # type: ignore[misc, valid-type]
        precision: str = "fp32"
        loss_scaler: LossScaler  # set by use_precision, which AvalancheLearner calls right after construction
        #: with ``loss=tet``, the per-time-step logits of the current batch (set by ``ComponentPlugin``)
        step_logits: torch.Tensor | None = None
        tet: bool = False

        def criterion(self) -> torch.Tensor:
            if self.tet and self.is_training and self.step_logits is not None:
                return tet_loss(self.step_logits, self.mb_y)
            return super().criterion()

        def use_precision(self, precision: str) -> None:
            self.precision = precision
            self.loss_scaler = LossScaler(precision, self.device)

        def forward(self) -> torch.Tensor:
            # the output goes back to float32, so every loss term Avalanche adds afterwards is float32
            with autocast(self.precision, self.device):
                return super().forward().float()

        def backward(self) -> None:
            self.loss_scaler.backward(self.loss, retain_graph=self.retain_graph)

        def optimizer_step(self) -> None:
            self.loss_scaler.step(self.optimizer)

        def make_optimizer(self, reset_optimizer_state: bool = False, remove_params: bool = True, **kwargs: Any) -> None:
            from avalanche.models.dynamic_optimizers import update_optimizer

            trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
            self.optimized_param_id = update_optimizer(
                self.optimizer,
                trainable,
                self.optimized_param_id,
                reset_state=reset_optimizer_state,
                remove_params=remove_params,
                verbose=False,
            )

    TrainableOnly.__name__ = TrainableOnly.__qualname__ = f"TrainableOnly{strategy_class.__name__}"
    return TrainableOnly


@contextlib.contextmanager
def no_avalanche_sharding() -> Iterator[None]:
    """Avalanche 0.6's data loaders (the plain, task-balanced and replay ones) add a DistributedSampler whenever a
    process group exists. Under torchrun the runner has already given this rank its shard, so that sampler would
    shard the shard: each of two ranks would train on a quarter of the data (measured: replay lost 5 to 14
    points of last accuracy that way). The loaders read the flag through their module's ``DistributedHelper``
    name, which says "not distributed" while a strategy trains; nothing else reads it there."""
    from avalanche.benchmarks.utils import data_loader

    helper = data_loader.DistributedHelper
    data_loader.DistributedHelper = SimpleNamespace(is_distributed=False)
    try:
        yield
    finally:
        data_loader.DistributedHelper = helper


def silent_evaluator() -> Any:
    """An Avalanche evaluator without metrics or loggers (the runner evaluates by itself), built quietly."""
    with quiet_avalanche():
        from avalanche.training.plugins import EvaluationPlugin

        return EvaluationPlugin(loggers=[])


def epoch_lr_schedule(optimizer: torch.optim.Optimizer, milestones: list[int], gamma: float) -> Any:
    """Avalanche's ``LRSchedulerPlugin`` stepping ``MultiStepLR`` once an epoch, restarted at every experience
    (rate back to ``lr``, epoch count back to 0): each experience gets the same schedule, as DER's stages do.

    ``reports_only``: the schedule restarts at each experience, so a run resumed at an experience boundary (the
    only place a checkpoint is written) needs none of its state.
    """
    from avalanche.training.plugins import LRSchedulerPlugin

    plugin = LRSchedulerPlugin(torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma),
                               reset_scheduler=True, reset_lr=True, step_granularity="epoch")
    plugin.reports_only = True
    return plugin


class ComponentPlugin:
    """Avalanche callbacks onto the learner's training components (Avalanche calls plugins by callback name).

    ``reports_only``: the components are not checkpointed as an Avalanche plugin but by the learner
    (``state["components"]``, ``incremental/learner.py``).
    """

    reports_only = True

    def __init__(self, learner: "AvalancheLearner") -> None:
        self.learner = learner
        self.state: TrainingState | None = None
        self.capture: StepLogits | None = None

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        model = distributed.unwrap(strategy.model)
        index = self.learner.experience_index
        self.state = TrainingState(model=model, optimizer=strategy.optimizer, experience=index,
                                   known_classes=known_classes(self.learner.context.stream, index))
        self.capture = StepLogits(model)
        self.learner.components.before_experience(self.state)

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        assert self.state is not None
        self.state.epoch = int(strategy.clock.train_exp_epochs)

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        if self.state is None or self.capture is None:
            return
        self.state.x, self.state.y, self.state.logits = strategy.mb_x, strategy.mb_y, strategy.mb_output
        self.state.step_logits = self.capture.step_logits(strategy.mb_output)
        strategy.step_logits = self.state.step_logits

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self.state is None:
            return
        extra = self.learner.components.extra_loss(self.state)
        if extra is not None:
            strategy.loss = strategy.loss + extra

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self.state is not None:
            self.learner.components.after_backward(self.state)
            self.state.x = self.state.y = self.state.logits = self.state.step_logits = None
            strategy.step_logits = None

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        if self.state is not None:
            self.learner.components.after_step(self.state)

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        if self.state is not None:
            self.learner.components.after_epoch(self.state)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.capture is not None:
            self.capture.close()
        if self.state is not None:
            self.learner.components.after_experience(self.state)
        self.state = self.capture = None


class AvalancheLearner(Learner):
    """A platform learner around one Avalanche strategy class (subclasses say which and with what options)."""

    strategy_class: Any = None
    #: strategy attributes that carry state between experiences, besides the plugins
    state_attributes: tuple[str, ...] = ("clock",)

    def __init__(self, config: StrategyConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.components = build_components(config, context)
        self.experience_index = 0
        self._model = self.build_model().to(context.device)
        self.optimizer = make_optimizer(self._model.parameters(), config)
        with quiet_avalanche():
            self.strategy = self.build_strategy()
        self.strategy.use_precision(config.precision)
        self.strategy.tet = isinstance(config, ComposableConfig) and config.loss == "tet"
        if self.components or self.strategy.tet:
            self.strategy.plugins.append(ComponentPlugin(self))
        self.strategy.model = self.distributed_model()
        self._state = AvalancheState(self._model)

    def distributed_model(self) -> nn.Module:
        """The model Avalanche trains: under torchrun, the DDP-wrapped model (state dicts stay unwrapped)."""
        return distributed.wrap(self._model, self.context.distributed, self.context.device)

    def local_memory(self, mem_size: int) -> int:
        """This process's share of a replay memory: under torchrun each rank fills its share from its own shard,
        so together the ranks hold ``mem_size`` samples, as one process would."""
        return distributed.local_share(mem_size, self.context.distributed)

    @property
    def model(self) -> nn.Module:  # type: ignore[override]
        """The strategy's current model: some strategies (GDumb) replace it at every experience."""
        strategy = self.__dict__.get("strategy")
        return distributed.unwrap(strategy.model) if strategy is not None else self._model

    @property
    def local_batch_size(self) -> int:
        """``batch_size`` is the global batch: each of the ``world_size`` processes takes its share."""
        return self.config.batch_size // self.context.distributed.world_size

    def build_model(self) -> nn.Module:
        """The backbone named by ``config.model`` with a head over every class of the stream."""
        stream = self.context.stream
        if stream.info.get("modality") == "text":  # full fine-tuning of a text model (adapters/lm/text_backbone.py)
            return build_text_classifier(self.config.model, stream, self.context.seed)
        return build_backbone(self.config.model, stream.input_shape, stream.n_classes)

    def strategy_kwargs(self) -> dict[str, Any]:
        """Options of this strategy beyond the shared ones (memory size, lambda, ...)."""
        return {}

    def build_strategy(self) -> Any:
        cfg = self.config
        kwargs = self.strategy_kwargs()
        # every epoch's mean loss reaches the run's loggers (a no-op when the run has none)
        kwargs["plugins"] = [*kwargs.get("plugins", []), epoch_loss_plugin(self.context)]
        return trainable_only(self.resolve_strategy_class())(
            model=self._model,
            optimizer=self.optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=self.local_batch_size,
            train_epochs=cfg.epochs,
            eval_mb_size=cfg.eval_batch_size,
            device=self.context.device,
            evaluator=silent_evaluator(),
            **kwargs,
        )

    def resolve_strategy_class(self) -> type:
        module_name, _, name = self.strategy_class.partition(":")
        with quiet_avalanche():
            return getattr(importlib.import_module(module_name), name)

    def train_experience(self, experience: Any) -> None:
        self.experience_index = int(getattr(experience, "current_experience", self.experience_index))
        self.train_avalanche(with_task_labels(experience))
        self.experience_index += 1

    def train_avalanche(self, experience: Any) -> None:
        """One ``strategy.train`` call, quiet, and with no second data sharding by Avalanche."""
        with quiet_avalanche(), no_avalanche_sharding():
            self.strategy.train(experience, num_workers=0)

    def summary(self) -> dict[str, Any]:
        return {"components": self.components.summary()} if self.components else {}

    def _stateful_plugins(self) -> list[Any]:
        from avalanche.training.plugins import EvaluationPlugin

        return [p for p in self.strategy.plugins
                if not isinstance(p, EvaluationPlugin) and not getattr(p, "reports_only", False)]

    def extra_state(self) -> dict[str, Any]:
        return {
            "plugins": [self._state.capture(p) for p in self._stateful_plugins()],
            "attributes": {a: self._state.capture(getattr(self.strategy, a, None)) for a in self.state_attributes},
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        plugins = self._stateful_plugins()
        for plugin, snap in zip(plugins, state.get("plugins", [])):
            self._state.restore(snap, plugin)
        for name, snap in state.get("attributes", {}).items():
            setattr(self.strategy, name, self._state.restore(snap, getattr(self.strategy, name, None)))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        register_missing_buffers(self.model, state["model"])
        super().load_state_dict(state)

    def optimizer_state(self) -> dict[str, Any] | None:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any] | None) -> None:
        if state:
            self.optimizer.load_state_dict(state)
            # Avalanche resets the optimizer state on the first experience it sees (optimized_param_id is
            # None); a resumed strategy is not on its first experience, so keep the loaded momentum.
            self.strategy.optimized_param_id = {
                n: p for n, p in self.strategy.model.named_parameters() if p.requires_grad
            }


def build_text_classifier(model: str, stream: Any, seed: int) -> nn.Module:
    """The whole text model, unfrozen, with a linear head over the stream's classes (``auto``: MiniLM)."""
    name = DEFAULT_TEXT_MODEL if model in ("auto", "") else model
    if not is_text_model(name):
        raise UserError(f"model: {model!r} is not a text model but benchmark {stream.name} holds text; use model="
                        "minilm, smollm2-135m, tiny-bert or tiny-llama")
    backbone = load_text_backbone(name, seed=seed, max_tokens=int(stream.info.get("max_tokens", 64))).visual
    for p in backbone.parameters():
        p.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TextClassifierNet(backbone, stream.n_classes)
