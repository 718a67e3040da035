import numpy as np
import pytest

from lifelong.platform.metrics import cil_metrics, mean_std

R = [[0.9, 0.0, 0.0],
     [0.6, 0.8, 0.0],
     [0.5, 0.4, 0.7]]


def test_metrics_by_hand():
    m = cil_metrics(R)
    seen = [0.9, (0.6 + 0.8) / 2, (0.5 + 0.4 + 0.7) / 3]
    assert m["average_incremental_accuracy"] == pytest.approx(np.mean(seen))
    assert m["last_accuracy"] == pytest.approx(seen[-1])
    # forgetting: exp0 best 0.9 -> 0.5, exp1 best 0.8 -> 0.4
    assert m["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.4)) / 2)
    assert m["bwt"] == pytest.approx(((0.5 - 0.9) + (0.4 - 0.8)) / 2)


def test_seen_accuracy_is_weighted_by_test_set_size():
    m = cil_metrics(R, test_sizes=[100, 300, 100])
    assert m["last_accuracy"] == pytest.approx((0.5 * 100 + 0.4 * 300 + 0.7 * 100) / 500)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    m = cil_metrics([[0.5, 0.0], [0.2, 0.9]])
    assert m["forgetting"] == pytest.approx(0.3)
    m3 = cil_metrics([[0.5, 0, 0], [0.8, 0.7, 0], [0.1, 0.7, 0.9]])
    assert m3["forgetting"] == pytest.approx(((0.8 - 0.1) + (0.7 - 0.7)) / 2)


def test_single_step_and_bad_shape():
    assert cil_metrics([[0.7]])["forgetting"] == 0.0
    with pytest.raises(ValueError, match="square"):
        cil_metrics([[0.1, 0.2]])


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2.0)))
    assert mean_std([5.0]) == (5.0, 0.0)
