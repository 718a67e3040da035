"""Every registered strategy, built-in or plugin, runs end to end on a tiny label-only stream.

A label-only stream (no task labels) is what breaks several of Avalanche's own strategies; this one test
catches that for every strategy that will ever be registered.
"""

import numpy as np
import pytest

from lifelong.platform.registry import list_plugins
from lifelong.platform.runner import resolve_config, run_experiment

STRATEGIES = [spec.name for spec in list_plugins("strategy")]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_runs_on_a_label_only_stream(strategy, tmp_path):
    config = resolve_config(strategy=strategy, benchmark="split-digits",
                            overrides={"task_labels": False, "n_experiences": 2, "train_per_class": 20, "epochs": 1})
    results = run_experiment(config, out=tmp_path, progress=False)
    matrix = np.asarray(results["accuracy_matrix"])
    assert matrix.shape == (2, 2)
    assert np.all(np.isfinite(matrix) & (0 <= matrix) & (matrix <= 1))
    assert len(results["seen_accuracy"]) == 2 and results["config"]["strategy"] == strategy
    # How well each method learns is its own tests' business (with one epoch on 100 images, methods made for
    # pre-trained backbones sit at chance); this test is about running on a stream without task labels.
