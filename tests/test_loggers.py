"""Run loggers (``loggers=[...]``): TensorBoard event files and CSV read back, per-epoch reports through
``RunContext.log_metric``, resume, compare, W&B offline, and the one-line errors for unknown loggers."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import TINY_STREAM

from lifelong.incremental.compare import compare
from lifelong.incremental.run import resolve_config, run_experiment
from lifelong.platform.config import ConfigError

EPOCHS = 2


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def values(acc, tag: str) -> list[float]:
    return [e.value for e in acc.Scalars(tag)]


def text(acc, tag: str) -> str:
    return acc.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def run(strategy: str, out: Path, loggers: list[str], **kwargs):
    config = resolve_config(strategy=strategy, seed=0, device="cpu",
                            overrides={**TINY_STREAM, "epochs": EPOCHS, "loggers": loggers})
    return run_experiment(config, out=out, progress=False, **kwargs)


def test_tensorboard_and_csv_hold_the_run(tmp_path: Path) -> None:
    results = run("naive", tmp_path / "run", ["tensorboard", "csv"])
    n = len(results["accuracy_matrix"])
    acc = events(tmp_path / "run" / "logs" / "tensorboard")
    for j in range(n):
        assert steps(acc, f"accuracy/exp{j}") == list(range(n))
        assert values(acc, f"accuracy/exp{j}") == pytest.approx([results["accuracy_matrix"][i][j] for i in range(n)])
    assert values(acc, "accuracy/seen") == pytest.approx(results["seen_accuracy"])
    assert [s for s, _ in scalars(acc, "train/loss_after_experience")] == list(range(n))
    losses = scalars(acc, "train/train_loss")  # one per epoch of every experience, from the built-in learner
    assert [s for s, _ in losses] == list(range(n * EPOCHS)) and all(v > 0 for _, v in losses)
    for key in ("average_incremental_accuracy", "last_accuracy", "forgetting", "bwt"):
        assert steps(acc, f"metrics/{key}") == [n - 1]
        assert values(acc, f"metrics/{key}") == pytest.approx([results[key]])
    config = json.loads(text(acc, "config").strip("`").removeprefix("json"))
    assert config["strategy"] == "naive" and config["loggers"] == ["tensorboard", "csv"]
    assert "| after step |" in text(acc, "accuracy_matrix")

    logs = tmp_path / "run" / "logs" / "csv"
    rows = read_csv(logs / "accuracy.csv")
    assert [int(r["after_step"]) for r in rows] == list(range(n))
    for i, row in enumerate(rows):
        assert [float(row[f"exp{j}"]) for j in range(n)] == pytest.approx(results["accuracy_matrix"][i], abs=1e-6)
        assert float(row["train_loss"]) > 0
    train = read_csv(logs / "train.csv")
    assert [(int(r["experience"]), int(r["epoch"])) for r in train] == [(i, e) for i in range(n) for e in range(EPOCHS)]
    assert [float(r["value"]) for r in train] == pytest.approx([v for _, v in losses], rel=1e-6)
    assert json.loads((logs / "config.json").read_text())["benchmark_config"]["train_per_class"] == 40
    metrics = {r["metric"]: float(r["value"]) for r in read_csv(logs / "metrics.csv")}
    assert metrics["last_accuracy"] == pytest.approx(results["last_accuracy"], abs=1e-6)


def test_der_reports_its_epoch_losses(tmp_path: Path) -> None:
    """DER runs its own loop (not Avalanche's): it reports through ``RunContext.log_metric`` itself."""
    results = run("der", tmp_path / "der", ["csv"])
    train = read_csv(tmp_path / "der" / "logs" / "csv" / "train.csv")
    n = len(results["accuracy_matrix"])
    assert [(int(r["experience"]), int(r["epoch"])) for r in train] == [(i, e) for i in range(n) for e in range(EPOCHS)]
    assert all(float(r["value"]) > 0 for r in train)


def test_loggers_change_neither_results_nor_the_checkpoint_identity(tmp_path: Path) -> None:
    plain = run("naive", tmp_path / "plain", [])
    logged = run("naive", tmp_path / "logged", ["csv"])
    assert plain["accuracy_matrix"] == logged["accuracy_matrix"]
    assert not (tmp_path / "plain" / "logs").exists()
    # resumed with another set of loggers: the same run; the CSV keeps one row per experience
    run("naive", tmp_path / "resumed", ["csv"], stop_after=1)
    resumed = run("naive", tmp_path / "resumed", ["csv", "tensorboard"], resume=True)
    assert resumed["accuracy_matrix"] == plain["accuracy_matrix"]
    rows = read_csv(tmp_path / "resumed" / "logs" / "csv" / "accuracy.csv")
    assert [int(r["after_step"]) for r in rows] == [0, 1]


def test_compare_logs_one_run_per_strategy_and_seed(tmp_path: Path) -> None:
    compare(["naive", "replay"], "split-digits", [0, 1], out=tmp_path / "cmp", progress=False, device="cpu",
            overrides={**TINY_STREAM, "epochs": 1, "loggers": ["tensorboard"]})
    found = sorted(p.parent.parent.parent.name for p in (tmp_path / "cmp").rglob("events.out.tfevents.*"))
    assert found == ["naive-seed0", "naive-seed1", "replay-seed0", "replay-seed1"]


def test_unknown_or_unavailable_logger_is_refused(monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"loggers: 'mlflow' is not allowed; allowed values: csv, tensorboard, wandb"):
        resolve_config(strategy="naive", overrides={"loggers": ["mlflow"]})
    assert resolve_config(strategy="naive", overrides={"loggers": "csv,tensorboard"}).loggers == ["csv", "tensorboard"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wandb is not available here.*lifelong\[wandb\]"):
        resolve_config(strategy="naive", overrides={"loggers": ["wandb"]})


def test_cli_unknown_logger_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    result = cli("run", "--strategy", "naive", "--set", "loggers=[tensorboard,visdom]", "--out", str(tmp_path / "r"))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "'visdom' is not allowed; allowed values: csv, tensorboard, wandb" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb (the optional extra) is not installed")
def test_wandb_offline_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run("naive", tmp_path / "run", ["wandb"])
    offline = list((tmp_path / "run" / "logs" / "wandb").rglob("offline-run-*"))
    assert offline and list(offline[0].glob("run-*.wandb"))
