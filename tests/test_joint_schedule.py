"""joint's step schedule: the rate each epoch sees follows ``lr_milestones`` and restarts at every experience
(without it the upper bound of docs/fashion-mnist.md fell below DER); bad milestones are refused by name."""

from __future__ import annotations

import pytest
import torch

from lifelong.incremental.learner import RunContext
from lifelong.platform.config import ConfigError, build_config
from lifelong.strategies.baselines import Joint, JointConfig


def _rates_per_epoch(stream, **overrides) -> list[float]:
    from avalanche.core import SupervisedPlugin

    class Record(SupervisedPlugin):  # type: ignore[misc]
        reports_only = True

        def __init__(self) -> None:
            super().__init__()
            self.rates: list[float] = []

        def before_training_epoch(self, strategy, **kwargs) -> None:
            self.rates.append(strategy.optimizer.param_groups[0]["lr"])

    cfg = build_config(JointConfig, {"epochs": 3, "lr": 0.05, "batch_size": 64, **overrides})
    torch.manual_seed(0)
    learner = Joint(cfg, RunContext(stream=stream, device=torch.device("cpu"), seed=0))
    record = Record()
    learner.strategy.plugins.append(record)
    for experience in stream.train_stream[:2]:
        learner.train_experience(experience)
    return record.rates


def test_the_rate_steps_at_each_milestone_and_restarts_every_experience(stream, one_thread):
    rates = _rates_per_epoch(stream, lr_milestones=[1], lr_gamma=0.1)
    assert rates == pytest.approx([0.05, 0.005, 0.005, 0.05, 0.005, 0.005])


def test_without_milestones_the_rate_stays(stream, one_thread):
    assert _rates_per_epoch(stream) == pytest.approx([0.05] * 6)


@pytest.mark.parametrize("overrides, named", [
    ({"lr_milestones": [0]}, "lr_milestones"),
    ({"lr_milestones": [3]}, "lr_milestones"),
    ({"lr_milestones": [2, 1]}, "lr_milestones"),
    ({"lr_milestones": [1], "lr_gamma": 0.0}, "lr_gamma"),
])
def test_bad_schedules_are_refused_by_name(overrides, named):
    with pytest.raises((ConfigError, ValueError), match=named):
        build_config(JointConfig, {"epochs": 3, **overrides})
