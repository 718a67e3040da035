import json

import numpy as np
import pytest
from conftest import TINY_STREAM

from lifelong.incremental.run import resolve_config, run_experiment
from lifelong.platform.errors import UserError


def _config(strategy, seed=0, **extra):
    return resolve_config(strategy=strategy, benchmark="split-digits", seed=seed,
                          overrides={**TINY_STREAM, "epochs": 1, **extra})


def test_run_writes_results_csv_and_plots(tmp_path):
    results = run_experiment(_config("replay", n_experiences=5, epochs=3), out=tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("strategy", "benchmark", "seed", "class_order", "accuracy_matrix", "average_incremental_accuracy",
                "last_accuracy", "forgetting", "bwt", "wall_time_s", "config", "versions"):
        assert key in saved, key
    assert saved["accuracy_matrix"] == results["accuracy_matrix"]
    assert np.asarray(saved["accuracy_matrix"]).shape == (5, 5)
    assert saved["config"]["strategy_config"]["mem_size"] == 200
    assert (tmp_path / "results.csv").read_text().startswith("after_step,exp0,exp1,exp2,exp3,exp4,seen_accuracy")
    for png in ("accuracy_matrix.png", "accuracy_curve.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a learner that learned something: the current experience is above chance (0.5) on average
    assert np.mean([results["accuracy_matrix"][i][i] for i in range(5)]) > 0.65


def test_same_seed_same_matrix_and_other_seed_differs(tmp_path):
    a = run_experiment(_config("naive", seed=4), out=tmp_path / "a", progress=False)
    b = run_experiment(_config("naive", seed=4), out=tmp_path / "b", progress=False)
    c = run_experiment(_config("naive", seed=5), out=tmp_path / "c", progress=False)
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["class_order"] != c["class_order"]


def test_resume_refuses_another_configuration(tmp_path):
    run_experiment(_config("naive"), out=tmp_path, progress=False, stop_after=1)
    with pytest.raises(UserError, match="another configuration"):
        run_experiment(_config("naive", lr=0.5), out=tmp_path, resume=True, progress=False)
    with pytest.raises(UserError, match="no checkpoint"):
        run_experiment(_config("naive"), out=tmp_path / "empty", resume=True, progress=False)


COMPARE = dict(overrides={**TINY_STREAM, "epochs": 3, "mem_size": 50}, progress=False)


@pytest.fixture(scope="module")
def serial_compare(tmp_path_factory):
    """naive and replay over seeds 0 and 1, one run after the other: made once, read by two tests."""
    from lifelong.incremental.compare import compare

    out = tmp_path_factory.mktemp("serial")
    return out, compare(["naive", "replay"], "split-digits", [0, 1], out=out, jobs=1, **COMPARE)


def test_compare_summarises_mean_and_std(serial_compare):
    tmp_path, summary = serial_compare
    saved = json.loads((tmp_path / "summary.json").read_text())["strategies"]
    assert set(saved) == {"naive", "replay"} and saved["replay"]["n_runs"] == 2
    runs = [json.loads((tmp_path / f"replay-seed{s}" / "results.json").read_text()) for s in (0, 1)]
    values = [r["average_incremental_accuracy"] for r in runs]
    assert saved["replay"]["average_incremental_accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert saved["replay"]["average_incremental_accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert runs[0]["config"]["strategy_config"]["mem_size"] == 50
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "comparison.png").exists()
    assert summary["naive"]["last_accuracy"]["mean"] < summary["replay"]["last_accuracy"]["mean"]


def test_compare_in_parallel_processes_gives_the_serial_summary(serial_compare, tmp_path):
    """Bit for bit: every number of summary.json but the wall times, and every run's accuracy matrix."""
    import sys

    from lifelong.incremental.compare import _pool_context, compare

    serial_dir, _ = serial_compare
    compare(["naive", "replay"], "split-digits", [0, 1], out=tmp_path / "parallel", jobs=2, **COMPARE)
    summaries = []
    for folder in (serial_dir, tmp_path / "parallel"):
        summary = json.loads((folder / "summary.json").read_text())
        for entry in summary["strategies"].values():
            assert entry.pop("wall_time_s")["mean"] > 0
        summaries.append(summary)
    assert summaries[0] == summaries[1]
    assert list(summaries[0]["strategies"]) == ["naive", "replay"]  # the order the strategies were given
    for run in ("naive-seed0", "naive-seed1", "replay-seed0", "replay-seed1"):
        serial, parallel = (json.loads((f / run / "results.json").read_text()) for f in (serial_dir, tmp_path / "parallel"))
        assert serial["accuracy_matrix"] == parallel["accuracy_matrix"], run
    if sys.platform.startswith("linux"):  # workers are forked from this process, with everything imported
        assert _pool_context().get_start_method() == "fork" and "avalanche.training" in sys.modules


def test_parallel_jobs_take_the_gpus_in_turn(monkeypatch):
    """No GPU here: the count is faked, to check which device each job is given (explicit devices are kept)."""
    import torch

    from lifelong.incremental.compare import _spread_over_gpus
    from lifelong.incremental.run import resolve_config

    configs = [resolve_config(strategy="naive", benchmark="split-digits", seed=s) for s in range(3)]
    configs.append(resolve_config(strategy="naive", benchmark="split-digits", seed=3, device="cpu"))
    assert _spread_over_gpus(configs) == configs  # no CUDA: nothing changes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [c.device for c in _spread_over_gpus(configs)] == ["cuda:0", "cuda:1", "cuda:0", "cpu"]
