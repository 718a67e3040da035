"""N-way K-shot episodes over the classes of any registered benchmark, with disjoint class splits.

The protocol of the few-shot literature (Vinyals et al. 2016, Snell et al. 2017): the classes are split once,
by the seed, into meta-training, validation and test classes that never share a class; an episode draws N of
one split's classes and, from each, K support and Q query samples, without replacement and with exactly K and
Q per class (balanced); the labels inside an episode are 0..N-1 in the order the classes were drawn.
Accuracy is reported over many test episodes (600 by default) as the mean and the 95 % interval
``1.96 * std / sqrt(n)``, the interval those papers print.

Choices where the protocol leaves room:

- any benchmark that produces a class-incremental stream works: it is built through the registry by name
  (``split-digits``, ``split-fashion-mnist``, later spoken words or event streams) and every experience is
  pooled, so the class split is the episode sampler's, not the stream's;
- meta-training episodes draw from the benchmark's *training* images of the meta-training classes, validation
  and test episodes from its *test* images of their classes, so no image seen in training is ever a support
  or a query, whichever split its class lands in;
- episode ``i`` of a sampler depends only on (seed, split, i), never on the episodes drawn before, so a run
  can be checked, resumed or evaluated in parallel and still see the same episodes;
- ``split_counts`` with zeros picks the split sizes: test and validation each get a fifth of the classes but
  at least N; validation is left empty when the classes are too few for three splits of N (ten-class
  stand-ins at 5-way: five meta-training classes, five test classes, no validation classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lifelong.incremental.streams import Stream
from lifelong.platform import registry
from lifelong.platform.config import ConfigError, build_config

if TYPE_CHECKING:
    import torch

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_TAG = {"train": 1, "val": 2, "test": 3}


@dataclass
class Episode:
    """One N-way K-shot episode: support and query samples with labels 0..N-1, and the pool's class ids."""

    support_x: "torch.Tensor"
    support_y: "torch.Tensor"
    query_x: "torch.Tensor"
    query_y: "torch.Tensor"
    classes: list[int]

    @property
    def n_way(self) -> int:
        return len(self.classes)


@dataclass
class ClassPool:
    """Every sample of a benchmark by class: the training images and the test images, as CPU tensors."""

    name: str
    train_x: "torch.Tensor"
    train_y: "torch.Tensor"
    test_x: "torch.Tensor"
    test_y: "torch.Tensor"
    stream: Stream

    @property
    def classes(self) -> list[int]:
        return sorted(set(self.train_y.tolist()) | set(self.test_y.tolist()))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def _gather(experiences: Any) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch
    from torch.utils.data import DataLoader

    xs, ys = [], []
    for experience in experiences:
        dataset = experience.dataset.eval() if hasattr(experience.dataset, "eval") else experience.dataset
        for batch in DataLoader(dataset, batch_size=1024, shuffle=False, num_workers=0):
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]).long())
    return torch.cat(xs), torch.cat(ys)


def stream_pool(stream: Stream) -> ClassPool:
    """The samples of every experience of ``stream`` pooled by class (labels are the stream's class-order ids)."""
    train_x, train_y = _gather(stream.train_stream)
    test_x, test_y = _gather(stream.test_stream)
    return ClassPool(stream.name, train_x, train_y, test_x, test_y, stream)


def load_pool(benchmark: str, benchmark_config: Any, seed: int) -> ClassPool:
    """Build the benchmark ``benchmark`` through the registry (its typed config from ``benchmark_config``, the
    seed the run's) and pool its samples; a benchmark that is not a class stream is refused in one line."""
    spec = registry.get("benchmark", benchmark)
    if spec.produces != "stream":
        takers = [s.name for s in registry.list_plugins("benchmark") if s.produces == "stream"]
        raise ConfigError(f"benchmark {benchmark!r} produces {spec.produces}, not labelled classes; few-shot "
                          f"episodes take one of: {', '.join(takers)}")
    config = benchmark_config
    if spec.config is not None and not isinstance(config, spec.config):
        config = build_config(spec.config, {**dict(config or {}), "seed": seed}, prefix="benchmark_config.")
    return stream_pool(spec.factory(config))


def split_counts(n_classes: int, n_way: int, train: int = 0, val: int = 0, test: int = 0) -> tuple[int, int, int]:
    """How many classes go to meta-training, validation and test (zeros: chosen as the module docstring says).

    Every non-empty split must hold at least ``n_way`` classes and the three must fit in ``n_classes``.
    """
    if n_way < 2:
        raise ConfigError(f"n_way must be at least 2, got {n_way}")
    if min(train, val, test) < 0:
        raise ConfigError("train_classes, val_classes and test_classes must be 0 (automatic) or positive")
    if not test:
        test = max(n_way, n_classes // 5)
    if not val and not train:
        val_wanted = max(n_way, n_classes // 5)
        val = val_wanted if n_classes - test - val_wanted >= n_way else 0
    if not train:
        train = n_classes - test - val
    for name, count in (("train_classes", train), ("test_classes", test)):
        if count < n_way:
            raise ConfigError(f"{name}={count}: a split needs at least n_way={n_way} classes; the benchmark has "
                              f"{n_classes} classes (test {test}, validation {val}, meta-training {train})")
    if 0 < val < n_way:
        raise ConfigError(f"val_classes={val}: a split needs at least n_way={n_way} classes (or 0 for none)")
    if train + val + test > n_classes:
        raise ConfigError(f"train_classes + val_classes + test_classes = {train} + {val} + {test} exceeds the "
                          f"benchmark's {n_classes} classes")
    return train, val, test


def split_classes(classes: Sequence[int], counts: tuple[int, int, int], seed: int) -> dict[str, list[int]]:
    """Disjoint meta-training, validation and test classes, drawn from ``classes`` by the seed."""
    order = [int(c) for c in np.random.default_rng([seed, 0]).permutation(sorted(int(c) for c in classes))]
    train, val, test = counts
    return {"train": sorted(order[:train]), "val": sorted(order[train:train + val]),
            "test": sorted(order[train + val:train + val + test])}


class EpisodeSampler:
    """Seeded, balanced N-way K-shot episodes over ``classes`` of ``(x, y)``; ``episode(i)`` is deterministic."""

    def __init__(self, x: "torch.Tensor", y: "torch.Tensor", classes: Sequence[int], *, n_way: int, k_shot: int,
                 n_query: int, seed: int, split: str = "test") -> None:
        if split not in SPLITS:
            raise ValueError(f"split: {split!r} is not allowed; allowed values: {', '.join(SPLITS)}")
        if k_shot < 1 or n_query < 1:
            raise ConfigError(f"k_shot and n_query must be at least 1, got {k_shot} and {n_query}")
        if len(classes) < n_way:
            raise ConfigError(f"the {split} split has {len(classes)} classes, fewer than n_way={n_way}")
        labels = y.numpy()
        self.index = {int(c): np.flatnonzero(labels == c) for c in classes}
        short = {c: len(i) for c, i in self.index.items() if len(i) < k_shot + n_query}
        if short:
            c, have = next(iter(short.items()))
            raise ConfigError(f"class {c} of the {split} split has {have} samples, fewer than k_shot + n_query = "
                              f"{k_shot + n_query}; lower n_query or k_shot, or give the benchmark more samples "
                              f"per class")
        self.x, self.classes = x, sorted(int(c) for c in classes)
        self.n_way, self.k_shot, self.n_query, self.seed, self.split = n_way, k_shot, n_query, seed, split

    def episode(self, i: int) -> Episode:
        """Episode ``i``: its classes and samples depend only on (seed, split, i)."""
        import torch

        rng = np.random.default_rng([self.seed, _SPLIT_TAG[self.split], int(i)])
        chosen = [self.classes[j] for j in rng.choice(len(self.classes), self.n_way, replace=False)]
        support, query = [], []
        for c in chosen:
            picked = rng.choice(self.index[c], self.k_shot + self.n_query, replace=False)
            support.append(picked[: self.k_shot])
            query.append(picked[self.k_shot:])
        s_idx = torch.as_tensor(np.concatenate(support), dtype=torch.long)
        q_idx = torch.as_tensor(np.concatenate(query), dtype=torch.long)
        labels = torch.arange(self.n_way)
        return Episode(self.x[s_idx], labels.repeat_interleave(self.k_shot), self.x[q_idx],
                       labels.repeat_interleave(self.n_query), chosen)


def samplers(pool: ClassPool, split: dict[str, list[int]], *, n_way: int, k_shot: int, n_query: int,
             seed: int) -> dict[str, EpisodeSampler]:
    """One sampler per non-empty split: meta-training on training images, validation and test on test images."""
    out: dict[str, EpisodeSampler] = {}
    for name in SPLITS:
        if not split[name]:
            continue
        x, y = (pool.train_x, pool.train_y) if name == "train" else (pool.test_x, pool.test_y)
        out[name] = EpisodeSampler(x, y, split[name], n_way=n_way, k_shot=k_shot, n_query=n_query, seed=seed,
                                   split=name)
    return out


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % interval, ``1.96 * std / sqrt(n)`` (sample std; 0 for one value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if arr.size == 1:
        return float(arr[0]), 0.0
    return float(arr.mean()), float(1.96 * arr.std(ddof=1) / math.sqrt(arr.size))
