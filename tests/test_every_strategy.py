"""Every registered strategy, built-in or plugin, runs end to end on a tiny label-only stream, and each
baseline resumed from its first checkpoint ends with the uninterrupted run's accuracy matrix.

A label-only stream (no task labels) is what breaks several of Avalanche's own strategies; this one test
catches that for every strategy that will ever be registered. The uninterrupted runs are made once and shared
by both tests.
"""

import hashlib

import numpy as np
import pytest

from lifelong.incremental.run import build_stream, resolve_config, run_experiment
from lifelong.platform.registry import list_plugins

STRATEGIES = [spec.name for spec in list_plugins("strategy")]


BASELINES = ["naive", "joint", "ewc", "lwf", "replay", "icarl", "gdumb", "dark-er"]
TINY = {"task_labels": False, "n_experiences": 2, "train_per_class": 20, "epochs": 1}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``finished(strategy)``: one uninterrupted run per strategy, made once for this module and shared by its
    tests (the results, and the stream's digest before and after the run)."""
    runs = {}

    def get(strategy):
        if strategy not in runs:
            config = resolve_config(strategy=strategy, benchmark="split-digits", overrides=TINY)
            stream = build_stream(config.benchmark, config.benchmark_config)  # the object the run will reuse
            before = _digest(stream)
            results = run_experiment(config, out=tmp_path_factory.mktemp(strategy), progress=False)
            runs[strategy] = results, before, _digest(stream)
        return runs[strategy]

    return get


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_runs_on_a_label_only_stream(strategy, finished):
    results, before, after = finished(strategy)
    assert after == before, "the run changed the stream it shares with later runs of this process"
    matrix = np.asarray(results["accuracy_matrix"])
    assert matrix.shape == (2, 2)
    assert np.all(np.isfinite(matrix) & (0 <= matrix) & (matrix <= 1))
    assert len(results["seen_accuracy"]) == 2 and results["config"]["strategy"] == strategy
    # How well each method learns is its own tests' business (with one epoch on 100 images, methods made for
    # pre-trained backbones sit at chance); this test is about running on a stream without task labels.


@pytest.mark.parametrize("strategy", BASELINES)
def test_resume_gives_the_same_results_as_an_uninterrupted_run(strategy, finished, tmp_path):
    config = resolve_config(strategy=strategy, benchmark="split-digits", overrides=TINY)
    partial = run_experiment(config, out=tmp_path / "cut", progress=False, stop_after=1)
    assert partial["completed"] == 1 and not (tmp_path / "cut" / "results.json").exists()
    resumed = run_experiment(config, out=tmp_path / "cut", resume=True, progress=False)
    assert resumed["accuracy_matrix"] == finished(strategy)[0]["accuracy_matrix"]


def _digest(stream) -> str:
    """Every sample, label and class list of a (tiny) stream: what a run must leave as it found it, since
    ``build_stream`` hands the same object to every run of the process."""
    h = hashlib.sha256(repr((stream.class_order, stream.classes_per_experience, stream.input_shape)).encode())
    for part in (stream.train_stream, stream.test_stream):
        for experience in part:
            dataset = experience.dataset
            h.update(f"{len(dataset)}:{list(dataset.targets)}".encode())
            for i in range(len(dataset)):
                h.update(np.ascontiguousarray(dataset[i][0].numpy()).tobytes())
    return h.hexdigest()
