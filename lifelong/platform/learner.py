"""What the runner needs from a class-incremental strategy, and nothing more.

A strategy is registered as a class ``Learner(config, context)``. The runner owns the loop over experiences
and the evaluation; the learner owns training and prediction. State is exchanged as state dicts only (no
pickled objects), so checkpoints survive library upgrades.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

from lifelong.platform.device import autocast, check_precision
from lifelong.platform.streams import Stream

if TYPE_CHECKING:
    import torch


@dataclass
class StrategyConfig:
    """Training settings every strategy shares; a strategy's own config subclasses this and may change defaults."""

    model: str = "auto"
    epochs: int = 4
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    #: mixed precision of training and prediction: fp32, bf16 or fp16 (see lifelong.platform.device)
    precision: str = "fp32"

    def validate(self) -> None:

        check_precision(self.precision)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


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
        epoch=e)`` at the end of each epoch; the run's loggers record it (``platform/loggers.py``). A no-op when
        the run has no loggers, so a learner may always call it; call it on every rank or on rank 0, only rank
        0 records."""
        if self.metric_sink is not None:
            self.metric_sink(name, float(value), epoch)


class Learner(abc.ABC):
    """A class-incremental learner as the runner drives it."""

    config: StrategyConfig
    model: "torch.nn.Module"

    def __init__(self, config: StrategyConfig, context: RunContext) -> None:
        self.config = config
        self.context = context

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
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer_state(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_extra_state(state.get("extra") or {})
        self.model.load_state_dict(state["model"])
        self.load_optimizer_state(state.get("optimizer"))

    def summary(self) -> dict[str, Any]:
        """Extra facts for results.json (e.g. spike rates, parameter counts)."""
        return {}
