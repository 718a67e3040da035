"""``split-digits``: scikit-learn's bundled digits (1,797 8x8 images, 10 classes) as a class-incremental stream.

The embedded default of the platform: it needs no download, so every run and test works offline. Images are
1x8x8 floats in [0, 1]; the train/test split is stratified and fixed by the seed, as is the class order
(unless one is given).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong.incremental.streams import (
    Stream,
    build_class_incremental_stream,
    resolve_class_order,
    split_class_counts,
)
from lifelong.platform.registry import register


@dataclass
class SplitDigitsConfig:
    """Options of the ``split-digits`` stream."""

    n_experiences: int = 5
    initial_classes: int = 0
    class_order: list[int] = field(default_factory=list)
    shuffle_classes: bool = True
    uneven: str = "error"
    test_fraction: float = 0.3
    train_per_class: int = 0
    task_labels: bool = True
    seed: int = 0
    #: few-shot class-incremental (FSCIL): >0 keeps only this many training samples of each class after the
    #: first experience (the base stage, sized by initial_classes); docs/few-shot.md
    shots: int = 0

    def validate(self) -> None:
        if not 0.05 <= self.test_fraction <= 0.9:
            raise ValueError(f"test_fraction must be between 0.05 and 0.9, got {self.test_fraction}")
        if self.train_per_class < 0:
            raise ValueError(f"train_per_class must be 0 (all) or positive, got {self.train_per_class}")
        if self.shots < 0:
            raise ValueError(f"shots must be 0 (all samples) or positive, got {self.shots}")


@register("benchmark", "split-digits", config=SplitDigitsConfig, summary="scikit-learn digits, 10 classes, 8x8, offline")
def split_digits(config: SplitDigitsConfig) -> Stream:
    """Build the stream; the seed fixes both the stratified split and the class order."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=config.test_fraction, stratify=y.numpy(), random_state=config.seed
    )
    order = resolve_class_order(range(10), config.seed, config.class_order, config.shuffle_classes)
    counts = split_class_counts(10, config.n_experiences, initial_classes=config.initial_classes, uneven=config.uneven)
    if config.train_per_class:  # a smaller stream for quick checks: the first n training images of each class
        kept = {c: 0 for c in range(10)}
        idx_train = [i for i in idx_train if _take(kept, int(y[i]), config.train_per_class)]
    train_idx, test_idx = torch.tensor(idx_train), torch.tensor(idx_test)
    return build_class_incremental_stream(
        "split-digits",
        train_data=(x[train_idx], y[train_idx]),
        train_targets=y[train_idx].tolist(),
        test_data=(x[test_idx], y[test_idx]),
        test_targets=y[test_idx].tolist(),
        class_order=order,
        counts=counts,
        input_shape=(1, 8, 8),
        class_names=[str(i) for i in range(10)],
        task_labels=config.task_labels,
        shots=config.shots,
        seed=config.seed,
    )


def _take(counter: dict[int, int], label: int, limit: int) -> bool:
    counter[label] += 1
    return counter[label] <= limit
