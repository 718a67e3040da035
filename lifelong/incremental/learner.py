"""What the runner needs from a class-incremental strategy, and nothing more; and the training-component API.

A strategy is registered as a class ``Learner(config, context)``. The runner owns the loop over experiences
and the evaluation; the learner owns training and prediction. State is exchanged as state dicts only (no
pickled objects), so checkpoints survive library upgrades.

A training component (registry kind ``component``: distillation, sparse masks, ...) is a ``Component``: hooks
that a learner which accepts components (``Capabilities.accepts_components``, a config that is a
``ComposableConfig``) calls around its own loop, with a ``TrainingState`` that says what is being trained. The
learner builds them with ``build_components`` and checkpoints them with its own state (docs/architecture.md,
"Training components").
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

from lifelong.incremental.streams import Stream
from lifelong.platform import registry
from lifelong.platform.config import ConfigError, build_config
from lifelong.platform.device import autocast, check_precision

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class StrategyConfig:
    """Training settings every strategy shares; a strategy's own config subclasses this and may change defaults."""

    model: str = "auto"  # backbone: auto (by input size), mlp, cnn-small, cnn-28, resnet-reduced, ...
    epochs: int = 4  # training epochs per experience
    batch_size: int = 32  # training batch (the global batch under torchrun)
    eval_batch_size: int = 256  # batch of the runner's evaluation
    lr: float = 0.01  # learning rate
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty of the optimizer
    #: mixed precision of training and prediction: fp32, bf16 or fp16 (see lifelong.platform.device)
    precision: str = "fp32"

    def validate(self) -> None:

        check_precision(self.precision)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class ComposableConfig(StrategyConfig):
    """The config of a strategy that accepts training components (and the TET loss).

    ``components`` names registered components, applied in that order; ``component_config`` holds each one's
    options by name (``--set kd.alpha=0.5`` lands in ``component_config["kd"]``); after ``validate`` every named
    component has its typed config there, defaults filled in. ``loss``: ``ce`` is the cross-entropy of the
    time-averaged logits, ``tet`` the mean over time steps of each step's cross-entropy (``tet_loss``; the same
    as ``ce`` for a network with one time step).
    """

    components: list[str] = field(default_factory=list)  # training components, in order (`plugins list --kind component`)
    component_config: dict[str, Any] = field(default_factory=dict)  # each component's options, by name
    loss: Literal["ce", "tet"] = "ce"  # ce: of the time-averaged logits; tet: mean over time steps

    def validate(self) -> None:
        super().validate()
        if self.loss not in ("ce", "tet"):
            raise ValueError(f"loss: {self.loss!r} is not allowed; allowed values: 'ce', 'tet'")
        self.component_config = resolve_component_configs(self.components, self.component_config)
        if self.components and self.precision == "fp16":
            raise ValueError("components run in fp32 or bf16: their own optimizers do not take part in fp16 loss "
                             "scaling; use precision=bf16 or fp32")


def resolve_component_configs(names: list[str], given: dict[str, Any]) -> dict[str, Any]:
    """The typed config of every component in ``names`` (in that order), built from ``given`` (plain dicts or
    configs); refuses unknown or repeated names, options for a component not named, and exclusive pairs."""
    if len(set(names)) != len(names):
        raise ValueError(f"components: {names} names a component twice")
    specs = {name: registry.get("component", name) for name in names}
    stray = [k for k in given if k not in specs]
    if stray:
        raise ValueError(f"options for component {stray[0]!r} given, but components does not name it "
                         f"(components={names}); add it, e.g. --set components=[{','.join([*names, stray[0]])}]")
    for name, spec in specs.items():
        clash = [other for other in getattr(spec.factory, "excludes", ()) if other in specs]
        if clash:
            raise ValueError(f"components: {name} cannot be combined with {clash[0]} (it already does what "
                             f"{clash[0]} does)")
    typed: dict[str, Any] = {}
    for name, spec in specs.items():
        value = given.get(name) or {}
        if spec.config is None:
            typed[name] = dict(value)
        elif isinstance(value, spec.config):
            typed[name] = value
        elif isinstance(value, dict):
            typed[name] = build_config(spec.config, value, prefix=f"{name}.")
        else:
            raise ConfigError(f"{name}: expected a mapping of {spec.config.__name__} options, got {value!r}")
    return typed


def tet_loss(step_logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
    """TET (Deng et al., ICLR 2022, the loss of FSL-SNN): the cross-entropy of every time step's logits
    ``[T, B, C]`` against the targets, averaged over the T steps (TET's optional MSE regulariser is not used)."""
    import torch.nn.functional as F

    T, B = step_logits.shape[:2]
    return F.cross_entropy(step_logits.flatten(0, 1).float(), targets.repeat(T))


def make_optimizer(parameters: Iterable["torch.nn.Parameter"], config: StrategyConfig) -> "torch.optim.Optimizer":
    """The optimizer ``config`` names, over those of ``parameters`` that require gradients.

    ``sgd``: ``SGD(lr, momentum, weight_decay)``; ``adam``: ``Adam(lr, weight_decay)`` (torch's other defaults).
    Every strategy builds its optimizers here; a stage with settings of its own (a classifier re-training at
    another learning rate, say) passes a ``StrategyConfig`` that holds them.
    """
    import torch

    params = [p for p in parameters if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer: {config.optimizer!r} is not allowed; allowed values: sgd, adam")


@dataclass
class DistributedInfo:
    """Rank information when the run is one process of a ``torch.distributed`` group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass
class RunContext:
    """What a learner may know about the run: the stream's shape, the device, the seed, the process group."""

    stream: "Stream"
    device: "torch.device"
    seed: int = 0
    distributed: DistributedInfo = field(default_factory=DistributedInfo)
    #: where ``log_metric`` sends its reports; the runner sets it when the run has loggers (``loggers=[...]``)
    metric_sink: Callable[[str, float, "int | None"], None] | None = None

    def log_metric(self, name: str, value: float, *, epoch: int | None = None) -> None:
        """Report a training metric of the experience being trained, e.g. ``log_metric("train_loss", mean_loss,
        epoch=e)`` at the end of each epoch; the run's loggers record it (``incremental/loggers.py``). A no-op when
        the run has no loggers, so a learner may always call it; call it on every rank or on rank 0, only rank
        0 records."""
        if self.metric_sink is not None:
            self.metric_sink(name, float(value), epoch)


@dataclass
class TrainingState:
    """What a component sees of the learner's loop; the learner keeps it current and passes it to every hook.

    ``model`` is the network being trained (unwrapped from DDP), ``optimizer`` the learner's optimizer of this
    experience; ``known_classes`` is how many classes earlier experiences brought (labels below it are old
    classes). Per batch: ``x``, ``y``, ``logits`` (time-averaged, ``[B, C]``) and ``step_logits``
    (``[T, B, C]``; ``[1, B, C]`` for an ordinary network) are set before ``extra_loss``.
    """

    model: "nn.Module"
    optimizer: "torch.optim.Optimizer | None" = None
    experience: int = 0
    known_classes: int = 0
    epoch: int = 0
    x: "torch.Tensor | None" = None
    y: "torch.Tensor | None" = None
    logits: "torch.Tensor | None" = None
    step_logits: "torch.Tensor | None" = None


class Component:
    """A training component (registry kind ``component``), built as ``Component(config, context)``.

    The learner calls, for every experience: ``before_experience`` (after its model and optimizer are ready),
    then per batch ``extra_loss`` (a term added to the loss before backward, or None), ``after_backward``
    (gradients are there, the step has not happened), ``after_step`` (after the optimizer step: re-apply masks),
    ``after_epoch`` at the end of each epoch, and ``after_experience`` when training on the experience ends.
    ``state_dict`` returns tensors and plain values only (checkpoints load with ``weights_only=True``);
    ``load_state_dict`` gets it back together with the learner's model as it was when the state was taken.
    ``excludes`` names components this one cannot be combined with.
    """

    excludes: tuple[str, ...] = ()

    def __init__(self, config: Any, context: RunContext) -> None:
        self.config = config
        self.context = context

    def before_experience(self, state: TrainingState) -> None:
        """Set up for the experience ``state.experience`` (hooks, masks, a teacher)."""

    def extra_loss(self, state: TrainingState) -> "torch.Tensor | None":
        """A loss term for the current batch, or None."""
        return None

    def after_backward(self, state: TrainingState) -> None:
        """Gradients of the current batch are in ``.grad``; the optimizer has not stepped."""

    def after_step(self, state: TrainingState) -> None:
        """The optimizer has stepped."""

    def after_epoch(self, state: TrainingState) -> None:
        """Epoch ``state.epoch`` of the experience has ended."""

    def after_experience(self, state: TrainingState) -> None:
        """Training on the experience has ended (remove hooks, keep what the next experience needs)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], model: "nn.Module") -> None:
        """Restore what ``state_dict`` returned; ``model`` is the learner's model as it was then."""

    def summary(self) -> dict[str, Any]:
        """Facts for results.json (densities, teacher accuracy, ...)."""
        return {}


class ComponentSet:
    """The components of one learner, called in the order the config names them."""

    def __init__(self, components: dict[str, Component] | None = None) -> None:
        self.components = dict(components or {})

    def __bool__(self) -> bool:
        return bool(self.components)

    def before_experience(self, state: TrainingState) -> None:
        for c in self.components.values():
            c.before_experience(state)

    def extra_loss(self, state: TrainingState) -> "torch.Tensor | None":
        total = None
        for c in self.components.values():
            term = c.extra_loss(state)
            if term is not None:
                total = term if total is None else total + term
        return total

    def after_backward(self, state: TrainingState) -> None:
        for c in self.components.values():
            c.after_backward(state)

    def after_step(self, state: TrainingState) -> None:
        for c in self.components.values():
            c.after_step(state)

    def after_epoch(self, state: TrainingState) -> None:
        for c in self.components.values():
            c.after_epoch(state)

    def after_experience(self, state: TrainingState) -> None:
        for c in self.components.values():
            c.after_experience(state)

    def state_dict(self) -> dict[str, Any]:
        return {name: c.state_dict() for name, c in self.components.items()}

    def load_state_dict(self, state: dict[str, Any], model: "nn.Module") -> None:
        for name, c in self.components.items():
            c.load_state_dict(state.get(name) or {}, model)

    def summary(self) -> dict[str, Any]:
        return {name: c.summary() for name, c in self.components.items()}


def build_components(config: StrategyConfig, context: RunContext) -> ComponentSet:
    """The components ``config`` names, built from their typed configs (none for a plain ``StrategyConfig``)."""
    if not isinstance(config, ComposableConfig):
        return ComponentSet()
    typed = resolve_component_configs(config.components, config.component_config)
    return ComponentSet({name: registry.get("component", name).factory(typed[name], context) for name in typed})


def known_classes(stream: Stream, experience: int) -> int:
    """How many classes the experiences before ``experience`` brought (labels are in class order)."""
    return sum(len(c) for c in stream.classes_per_experience[:experience])


class Learner(abc.ABC):
    """A class-incremental learner as the runner drives it.

    A learner that accepts components (registered with ``Capabilities(accepts_components=True)``) builds
    ``self.components`` with ``build_components`` and calls its hooks; the base class checkpoints them.
    """

    config: StrategyConfig
    model: "torch.nn.Module"

    def __init__(self, config: StrategyConfig, context: RunContext) -> None:
        self.config = config
        self.context = context
        self.components = ComponentSet()

    @abc.abstractmethod
    def train_experience(self, experience: Any) -> None:
        """Learn from one training experience of the stream (an Avalanche experience)."""

    def predict(self, x: "torch.Tensor") -> "torch.Tensor":
        """Logits over all classes of the stream (relabelled 0..n_classes-1 in class order)."""
        import torch


        self.model.eval()
        with torch.no_grad(), autocast(self.config.precision, x.device):
            return self.model(x).float()

    def extra_state(self) -> dict[str, Any]:
        """Strategy state beyond the model (memories, old models, importances) as tensors and plain values."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""

    def optimizer_state(self) -> dict[str, Any] | None:
        """The optimizer's state dict, if the learner keeps one across experiences."""
        return None

    def load_optimizer_state(self, state: dict[str, Any] | None) -> None:
        """Restore what ``optimizer_state`` returned."""

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer_state(),
            "extra": self.extra_state(),
        }
        if self.components:
            state["components"] = self.components.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_extra_state(state.get("extra") or {})
        self.model.load_state_dict(state["model"])
        self.load_optimizer_state(state.get("optimizer"))
        if self.components:
            self.components.load_state_dict(state.get("components") or {}, self.model)

    def summary(self) -> dict[str, Any]:
        """Extra facts for results.json (e.g. spike rates, parameter counts)."""
        return {}


def unsaved_memory(learner: Any, uses_replay_memory: bool) -> list[str]:
    """What a learner that keeps a memory (``uses_replay_memory``) does not save: the ``extra_state`` /
    ``load_extra_state`` pair left as the base class has it. Resuming such a learner would continue with an
    empty memory and give other numbers than the uninterrupted run, so the runner refuses ``--resume`` for it."""
    if not uses_replay_memory:
        return []
    cls = type(learner)
    return [name for name in ("extra_state", "load_extra_state")
            if getattr(cls, name, None) is getattr(Learner, name)]

