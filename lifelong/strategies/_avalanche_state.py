"""``AvalancheState``: the state an Avalanche strategy keeps between experiences (its plugins' buffers, clocks,
old models, importances) as a tree of dicts, lists, tensors and plain values that ``torch.load(weights_only=True)``
reads back, and its restoration into a live strategy.

Avalanche 0.6.0's own ``save_checkpoint`` pickles the whole strategy with dill, which fails on torch 2.14 and
would tie checkpoints to the library's classes; this walks the objects instead. Restoring only re-creates
classes from ``avalanche.*`` modules, by name.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn


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
            register_missing_buffers(module, snap["state"])
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


def register_missing_buffers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Create buffers that a module registers lazily during training (iCaRL's NCM class means)."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own:
            continue
        owner_name, _, buffer_name = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner.register_buffer(buffer_name, torch.empty_like(value))
