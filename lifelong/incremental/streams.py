"""Class-incremental streams as Avalanche benchmarks, with the class-split arithmetic checked here.

Avalanche 0.6.0's ``class_incremental_benchmark`` silently drops the remainder classes when they do not divide
evenly; ``split_class_counts`` refuses such a split with a clear error, or gives the remainder to the last
experience when asked (``uneven="last"``). Labels are relabelled in class order (the first class seen is 0),
as PyCIL does, so incremental heads grow naturally; the original ids stay in ``class_order``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from lifelong.platform.config import ConfigError
from lifelong.platform.quiet import quiet_avalanche


@dataclass
class Stream:
    """A class-incremental benchmark: the Avalanche scenario plus the facts the runner and results need."""

    name: str
    scenario: Any
    class_order: list[int]
    classes_per_experience: list[list[int]]
    input_shape: tuple[int, ...]
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_stream(self) -> Any:
        return self.scenario.train_stream

    @property
    def test_stream(self) -> Any:
        return self.scenario.test_stream

    @property
    def n_experiences(self) -> int:
        return len(self.classes_per_experience)

    @property
    def n_classes(self) -> int:
        return sum(len(c) for c in self.classes_per_experience)

    def names_in_order(self) -> list[str] | None:
        """Class names in relabelled order (index i is the name of relabelled class i)."""
        if self.class_names is None:
            return None
        return [self.class_names[c] for c in self.class_order]


def split_class_counts(
    n_classes: int, n_experiences: int, *, initial_classes: int = 0, uneven: str = "error"
) -> list[int]:
    """How many classes each experience gets.

    ``initial_classes`` > 0 gives the first experience that many classes (the "B50" protocols) and splits the
    rest evenly over the remaining experiences.
    """
    if n_experiences < 1:
        raise ConfigError(f"n_experiences must be at least 1, got {n_experiences}")
    if uneven not in ("error", "last"):
        raise ConfigError(f"uneven: {uneven!r} is not allowed; allowed values: 'error', 'last'")
    if initial_classes < 0 or initial_classes > n_classes:
        raise ConfigError(f"initial_classes must be between 0 and {n_classes}, got {initial_classes}")
    counts: list[int] = []
    rest, steps = n_classes, n_experiences
    if initial_classes:
        counts.append(initial_classes)
        rest, steps = n_classes - initial_classes, n_experiences - 1
        if steps == 0:
            if rest:
                raise ConfigError(
                    f"initial_classes={initial_classes} with n_experiences=1 leaves {rest} classes unassigned"
                )
            return counts
    if steps > rest:
        raise ConfigError(f"cannot split {rest} classes into {steps} experiences (fewer classes than experiences)")
    per, remainder = divmod(rest, steps)
    if remainder and uneven == "error":
        raise ConfigError(
            f"{rest} classes do not divide into {steps} experiences ({remainder} left over); choose another "
            f"n_experiences or set uneven=last to give the remainder to the last experience"
        )
    counts.extend([per] * steps)
    counts[-1] += remainder
    return counts


def resolve_class_order(
    classes: Sequence[int], seed: int, class_order: Sequence[int] | None = None, shuffle: bool = True
) -> list[int]:
    """The order in which classes appear: given, shuffled by the seed, or sorted."""
    classes = sorted(int(c) for c in classes)
    if class_order:
        order = [int(c) for c in class_order]
        if sorted(order) != classes:
            missing = sorted(set(classes) - set(order))
            extra = sorted(set(order) - set(classes))
            raise ConfigError(
                f"class_order must be a permutation of the {len(classes)} classes"
                f"{'; missing ' + str(missing) if missing else ''}{'; unknown ' + str(extra) if extra else ''}"
            )
        return order
    if not shuffle:
        return classes
    rng = np.random.RandomState(seed)
    return [classes[i] for i in rng.permutation(len(classes))]


def build_class_incremental_stream(
    name: str,
    *,
    train_data: Any,
    train_targets: Sequence[int],
    test_data: Any,
    test_targets: Sequence[int],
    class_order: list[int],
    counts: list[int],
    input_shape: tuple[int, ...],
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    class_names: list[str] | None = None,
    task_labels: bool = True,
    info: dict[str, Any] | None = None,
    shots: int = 0,
    seed: int = 0,
) -> Stream:
    """Split a train and a test data set by class into experiences, relabelled in ``class_order``.

    The experiences carry task label 0 on every sample (as Avalanche's own classic benchmarks do) unless
    ``task_labels`` is false, which builds a label-only stream. ``shots`` > 0 makes a few-shot
    class-incremental stream (FSCIL, as TOPIC, CEC and FACT define it): the first experience (the base stage)
    keeps all its training samples, every later experience only ``shots`` training samples of each of its
    classes, drawn by ``seed``; the test experiences keep every test sample.
    """

    with quiet_avalanche():
        from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    relabel = {c: i for i, c in enumerate(class_order)}
    bounds = np.cumsum([0] + counts)
    groups = [list(range(bounds[i], bounds[i + 1])) for i in range(len(counts))]
    train_new = np.array([relabel[int(t)] for t in train_targets])
    test_new = np.array([relabel[int(t)] for t in test_targets])
    kept = few_shot_mask(train_new, groups, shots, seed) if shots else np.ones(len(train_new), dtype=bool)
    streams = {}
    # test experiences start in the eval transform group, as in Avalanche's own builders (nc_benchmark), so a
    # consumer that forgets ``.eval()`` still sees un-augmented test images
    for stream_name, data, targets, initial_group in (
        ("train", train_data, train_new, "train"),
        ("test", test_data, test_new, "eval"),
    ):
        experiences = []
        for group in groups:
            idx = np.flatnonzero(np.isin(targets, group) & (kept if stream_name == "train" else True))
            experiences.append(
                _classification_dataset(
                    data, idx, targets, relabel, train_transform, eval_transform, task_labels, initial_group
                )
            )
        streams[stream_name] = experiences
    scenario = benchmark_from_datasets(train=streams["train"], test=streams["test"])
    return Stream(
        name=name,
        scenario=scenario,
        class_order=list(class_order),
        classes_per_experience=groups,
        input_shape=tuple(input_shape),
        class_names=class_names,
        info=dict(info or {}),
    )


def few_shot_mask(targets: np.ndarray, groups: list[list[int]], shots: int, seed: int) -> np.ndarray:
    """Which training samples a few-shot stream keeps: all of the first group's classes, ``shots`` seeded
    samples of each later class (refused in one line when a class has fewer)."""
    keep = np.isin(targets, groups[0])
    for group in groups[1:]:
        for c in group:
            idx = np.flatnonzero(targets == c)
            if len(idx) < shots:
                raise ConfigError(f"shots={shots}: class {c} (in class order) has only {len(idx)} training samples")
            keep[np.random.default_rng([seed, int(c)]).choice(idx, shots, replace=False)] = True
    return keep


class _Relabelled:
    """A view of ``data`` restricted to ``indices`` with targets mapped to class-order ids."""

    def __init__(self, data: Any, indices: np.ndarray, relabel: dict[int, int]) -> None:
        self.data, self.indices, self.relabel = data, indices, relabel

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y = self.data[int(self.indices[i])][:2]
        return x, self.relabel[int(y)]


class _TensorPairs:
    """(image tensor, int label) pairs: Avalanche's own tensor datasets give int labels, and mixing the two
    in one batch (current data with replayed memory) breaks collation."""

    def __init__(self, x: Any, y: list[int]) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.x[i], self.y[i]


def _classification_dataset(
    data: Any,
    idx: np.ndarray,
    new_targets: np.ndarray,
    relabel: dict[int, int],
    train_transform: Callable | None,
    eval_transform: Callable | None,
    task_labels: bool,
    initial_group: str = "train",
) -> Any:
    import torch
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import (
        ClassificationDataset,
        _make_taskaware_classification_dataset,
    )
    targets = new_targets[idx].tolist()
    if isinstance(data, tuple):  # (x tensor, y tensor): already materialised
        base = _TensorPairs(data[0][torch.as_tensor(idx, dtype=torch.long)], targets)
    else:
        base = _Relabelled(data, idx, relabel)
    groups = {"train": (train_transform, None), "eval": (eval_transform, None)}
    if task_labels:
        return _make_taskaware_classification_dataset(
            base, targets=targets, task_labels=0, transform_groups=groups, initial_transform_group=initial_group
        )
    return ClassificationDataset(
        [base], data_attributes=[DataAttribute(targets, "targets")], transform_groups=groups
    ).with_transforms(initial_group)
