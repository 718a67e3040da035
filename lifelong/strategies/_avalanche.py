"""The bridge from Avalanche 0.6.0 strategies to the platform's ``Learner``, with Avalanche's pitfalls fixed.

What this fixes (measured on avalanche-lib 0.6.0, torch 2.14):
- strategies built without a criterion fail: every wrapper passes ``CrossEntropyLoss`` explicitly;
- LwF, Dark Experience Replay and others read ``mb_task_id`` from the last batch element, so on a stream built
  without task labels they read the class labels instead: experiences without task labels get a constant
  task label 0 before Avalanche sees them;
- ``make_optimizer`` puts every parameter (frozen ones included) into the optimizer: here only parameters
  with ``requires_grad`` are optimised;
- the default evaluator prints to stdout and ``save_checkpoint`` pickles the whole strategy with dill (which
  fails on torch 2.14): the runner evaluates by itself, and the strategy state is captured by
  ``AvalancheState`` as tensors and plain values, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from types import SimpleNamespace
from typing import Any, Iterator

import torch
from torch import nn

from lifelong.adapters.backbones import build_backbone
from lifelong.platform import distributed
from lifelong.platform.device import LossScaler, autocast
from lifelong.platform.learner import Learner, RunContext, StrategyConfig
from lifelong.platform.quiet import quiet_avalanche


def make_optimizer(params: Any, config: StrategyConfig) -> torch.optim.Optimizer:
    """The optimizer named by the config, over ``params`` (only trainable ones are ever passed)."""
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


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
    with quiet_avalanche():
        from avalanche.training.plugins import EvaluationPlugin

        return EvaluationPlugin(loggers=[])


class AvalancheState:
    """Captures and restores the state an Avalanche strategy keeps between experiences.

    Plugins and a few strategy attributes are walked recursively; tensors, plain values, module state dicts,
    Avalanche buffer datasets (materialised as tensors) and Avalanche's own small objects (buffers, clocks,
    ``ParamData``) are turned into a tree of dicts, lists and tensors that ``torch.load(weights_only=True)``
    reads back. Anything else (optimizers, callables, references to the strategy) is left as it is.
    """

    def __init__(self, template_model: nn.Module) -> None:
        self.template_model = template_model

    # -- capture --------------------------------------------------------------------------------------
    def capture(self, value: Any, depth: int = 0) -> Any:
        from avalanche.benchmarks.utils import AvalancheDataset

        if depth > 12:
            return {"__kind__": "skip"}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().clone()
        if isinstance(value, nn.Module):
            return {"__kind__": "module", "state": {k: v.detach().cpu().clone() for k, v in value.state_dict().items()}}
        if isinstance(value, AvalancheDataset):
            return self._capture_dataset(value)
        if isinstance(value, (set, frozenset)):
            return {"__kind__": "set", "items": [self.capture(v, depth + 1) for v in sorted(value, key=repr)]}
        if isinstance(value, (list, tuple)):
            return {"__kind__": "tuple" if isinstance(value, tuple) else "list",
                    "items": [self.capture(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            return {"__kind__": "dict", "items": [[self.capture(k, depth + 1), self.capture(v, depth + 1)]
                                                  for k, v in value.items()]}
        module = type(value).__module__
        if module.startswith("avalanche.") and hasattr(value, "__dict__") and not _is_strategy(value):
            return {"__kind__": "object", "class": f"{module}:{type(value).__qualname__}",
                    "attrs": {k: self.capture(v, depth + 1) for k, v in vars(value).items() if not k.startswith("__")}}
        if isinstance(value, (torch.Size,)):
            return {"__kind__": "size", "items": list(value)}
        return {"__kind__": "skip"}

    def _capture_dataset(self, dataset: Any) -> dict[str, Any]:
        """Materialise a (small) buffer dataset: its item columns and its data attributes, as tensors.

        Items are read with the dataset's current transforms, so a restored buffer of an augmented stream
        replays fixed views; on tensor streams (split-digits) the restored buffer is identical.
        """
        attributes = [
            {"name": name, "use_in_getitem": bool(attr.use_in_getitem), "values": _stack(list(attr))}
            for name, attr in dataset._data_attributes.items()
        ]
        n_appended = sum(a["use_in_getitem"] for a in attributes)
        items = [dataset[i] for i in range(len(dataset))]
        n_base = (len(items[0]) - n_appended) if items else 0
        columns = [_stack([item[c] for item in items]) for c in range(n_base)]
        return {"__kind__": "dataset", "columns": columns, "attributes": attributes}

    # -- restore --------------------------------------------------------------------------------------
    def restore(self, snap: Any, current: Any) -> Any:
        if not isinstance(snap, dict) or "__kind__" not in snap:
            return snap
        kind = snap["__kind__"]
        if kind == "skip":
            return current
        if kind == "set":
            return {self.restore(v, None) for v in snap["items"]}
        if kind == "size":
            return torch.Size(snap["items"])
        if kind == "module":
            module = current if isinstance(current, nn.Module) else copy.deepcopy(self.template_model)
            _register_missing_buffers(module, snap["state"])
            module.load_state_dict(snap["state"])
            return module
        if kind == "dataset":
            return self._restore_dataset(snap)
        if kind in ("list", "tuple"):
            old = list(current) if isinstance(current, (list, tuple)) else []
            items = [self.restore(s, old[i] if i < len(old) else None) for i, s in enumerate(snap["items"])]
            if isinstance(current, list):
                current[:] = items
                return current
            return tuple(items) if kind == "tuple" else items
        if kind == "dict":
            old = current if isinstance(current, dict) else {}
            restored = {}
            for k_snap, v_snap in snap["items"]:
                key = self.restore(k_snap, None)
                restored[key] = self.restore(v_snap, old.get(key))
            if isinstance(current, dict):
                current.clear()
                current.update(restored)
                return current
            return restored
        if kind == "object":
            module_name, _, qualname = snap["class"].partition(":")
            if not module_name.startswith("avalanche."):
                raise ValueError(f"checkpoint names a class outside avalanche: {snap['class']}")
            cls: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            obj = current if type(current) is cls else cls.__new__(cls)
            for name, value in snap["attrs"].items():
                setattr(obj, name, self.restore(value, getattr(obj, name, None)))
            return obj
        raise ValueError(f"unknown state kind {kind!r} in checkpoint")

    @staticmethod
    def _restore_dataset(snap: dict[str, Any]) -> Any:
        from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
        from avalanche.benchmarks.utils.classification_dataset import (
            ClassificationDataset,
            TaskAwareSupervisedClassificationDataset,
        )

        attributes = [DataAttribute(_attribute_values(a["values"]), a["name"], use_in_getitem=a["use_in_getitem"])
                      for a in snap["attributes"]]
        names = {a["name"] for a in snap["attributes"]}
        if "targets" not in names:  # e.g. the empty concatenation a buffer starts from
            cls: Any = AvalancheDataset
        elif "targets_task_labels" in names:
            cls = TaskAwareSupervisedClassificationDataset
        else:
            cls = ClassificationDataset
        return cls([_Rows(snap["columns"])], data_attributes=attributes or None)


class _Rows:
    """Rows of materialised columns; 1-d integer columns come back as ints, as Avalanche's datasets give them."""

    def __init__(self, columns: list[torch.Tensor]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return tuple(int(c[i]) if c.dim() == 1 and not c.is_floating_point() else c[i] for c in self.columns)


def _attribute_values(values: torch.Tensor) -> Any:
    """Values as Avalanche keeps them: a constant 1-d attribute (task labels) as a ConstantSequence, since
    Avalanche cannot concatenate a plain list onto one."""
    from avalanche.benchmarks.utils.flat_data import ConstantSequence, FlatData

    if values.dim() != 1:  # per-sample tensors (DER's logits): a FlatData keeps them tensors, a list would not
        return FlatData([list(values)], discard_elements_not_in_indices=True)
    if len(values) and bool((values == values[0]).all()):
        return ConstantSequence(values[0].item(), len(values))
    return values.tolist()


def _stack(values: list[Any]) -> torch.Tensor:
    if values and isinstance(values[0], torch.Tensor):
        return torch.stack([v.detach().cpu() for v in values])
    return torch.as_tensor(values)


def _is_strategy(value: Any) -> bool:
    from avalanche.training.templates import BaseTemplate

    return isinstance(value, BaseTemplate)


class AvalancheLearner(Learner):
    """A platform learner around one Avalanche strategy class (subclasses say which and with what options)."""

    strategy_class: Any = None
    #: strategy attributes that carry state between experiences, besides the plugins
    state_attributes: tuple[str, ...] = ("clock",)

    def __init__(self, config: StrategyConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self._model = self.build_model().to(context.device)
        self.optimizer = make_optimizer(self._model.parameters(), config)
        with quiet_avalanche():
            self.strategy = self.build_strategy()
        self.strategy.use_precision(config.precision)
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
        return build_backbone(self.config.model, stream.input_shape, stream.n_classes)

    def strategy_kwargs(self) -> dict[str, Any]:
        """Options of this strategy beyond the shared ones (memory size, lambda, ...)."""
        return {}

    def build_strategy(self) -> Any:
        cfg = self.config
        return trainable_only(self.resolve_strategy_class())(
            model=self._model,
            optimizer=self.optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=self.local_batch_size,
            train_epochs=cfg.epochs,
            eval_mb_size=cfg.eval_batch_size,
            device=self.context.device,
            evaluator=silent_evaluator(),
            **self.strategy_kwargs(),
        )

    def resolve_strategy_class(self) -> type:
        module_name, _, name = self.strategy_class.partition(":")
        with quiet_avalanche():
            return getattr(importlib.import_module(module_name), name)

    def train_experience(self, experience: Any) -> None:
        self.train_avalanche(with_task_labels(experience))

    def train_avalanche(self, experience: Any) -> None:
        """One ``strategy.train`` call, quiet, and with no second data sharding by Avalanche."""
        with quiet_avalanche(), no_avalanche_sharding():
            self.strategy.train(experience, num_workers=0)

    def _stateful_plugins(self) -> list[Any]:
        from avalanche.training.plugins import EvaluationPlugin

        return [p for p in self.strategy.plugins if not isinstance(p, EvaluationPlugin)]

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
        _register_missing_buffers(self.model, state["model"])
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


def _register_missing_buffers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Create buffers that a module registers lazily during training (iCaRL's NCM class means)."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own:
            continue
        owner_name, _, buffer_name = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner.register_buffer(buffer_name, torch.empty_like(value))
