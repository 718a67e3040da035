import numpy as np
import pytest
import torch

from lifelong.incremental.streams import resolve_class_order, split_class_counts
from lifelong.platform.config import ConfigError
from lifelong.platform.registry import create


def test_even_split_and_initial_classes():
    assert split_class_counts(10, 5) == [2] * 5
    assert split_class_counts(100, 6, initial_classes=50) == [50, 10, 10, 10, 10, 10]


def test_uneven_split_is_refused_or_given_to_the_last_experience():
    with pytest.raises(ConfigError, match="10 classes do not divide into 3 experiences"):
        split_class_counts(10, 3)
    assert split_class_counts(10, 3, uneven="last") == [3, 3, 4]
    with pytest.raises(ConfigError, match="fewer classes than experiences"):
        split_class_counts(3, 5)


def test_class_order_must_be_a_permutation():
    assert resolve_class_order(range(4), 0, [3, 1, 0, 2]) == [3, 1, 0, 2]
    with pytest.raises(ConfigError, match=r"missing \[2\]"):
        resolve_class_order(range(4), 0, [3, 1, 0, 0])
    assert resolve_class_order(range(4), 7) == resolve_class_order(range(4), 7)
    assert resolve_class_order(range(4), 0, shuffle=False) == [0, 1, 2, 3]


def _stream_classes(stream, split):
    exps = stream.train_stream if split == "train" else stream.test_stream
    return [sorted({int(y) for y in exp.dataset.targets}) for exp in exps]


def test_split_digits_stream():
    stream = create("benchmark", "split-digits", seed=3)
    assert stream.n_experiences == 5 and stream.n_classes == 10 and stream.input_shape == (1, 8, 8)
    assert sorted(stream.class_order) == list(range(10))
    assert _stream_classes(stream, "train") == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert _stream_classes(stream, "test") == _stream_classes(stream, "train")
    x, y, t = stream.train_stream[0].dataset[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and t == 0
    total = sum(len(e.dataset) for e in stream.train_stream) + sum(len(e.dataset) for e in stream.test_stream)
    assert total == 1797


def test_split_digits_relabels_in_class_order():
    from sklearn.datasets import load_digits

    stream = create("benchmark", "split-digits", seed=1, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0], n_experiences=2)
    digits = load_digits()
    x, y, _ = stream.train_stream[0].dataset[0]
    # find the original image: its original label must be 9 - y
    flat = (x.squeeze(0) * 16).round().numpy()
    matches = np.flatnonzero((np.abs(digits.images - flat).sum(axis=(1, 2)) == 0))
    assert {int(digits.target[m]) for m in matches} == {9 - int(y)}


def test_split_digits_is_fixed_by_the_seed_and_stratified():
    a = create("benchmark", "split-digits", seed=5)
    b = create("benchmark", "split-digits", seed=5)
    c = create("benchmark", "split-digits", seed=6)
    xa = torch.stack([a.train_stream[0].dataset[i][0] for i in range(20)])
    xb = torch.stack([b.train_stream[0].dataset[i][0] for i in range(20)])
    assert a.class_order == b.class_order and torch.equal(xa, xb)
    assert a.class_order != c.class_order
    sizes = [len(e.dataset) for e in a.test_stream]
    assert max(sizes) - min(sizes) <= 4  # stratified: every class keeps ~30 % for test


def test_label_only_stream_has_no_task_labels():
    stream = create("benchmark", "split-digits", task_labels=False, n_experiences=2)
    item = stream.train_stream[1].dataset[0]
    assert len(item) == 2 and int(item[1]) in range(5, 10)


def test_uneven_digits_split_errors_or_keeps_every_class():
    with pytest.raises(ConfigError, match="do not divide"):
        create("benchmark", "split-digits", n_experiences=3)
    stream = create("benchmark", "split-digits", n_experiences=3, uneven="last")
    assert [len(c) for c in stream.classes_per_experience] == [3, 3, 4]
    assert _stream_classes(stream, "train")[-1] == [6, 7, 8, 9]
