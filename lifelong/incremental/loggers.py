"""Run loggers: what a class-incremental run reports while it runs, beyond results.json / CSV / plots.

``loggers`` is a top-level run key (``--set loggers=[tensorboard,csv]``; default: none). Each logger writes under
``<out>/logs/``:

- ``csv``: ``logs/csv/config.json`` (the resolved run config), ``logs/csv/train.csv`` (one row per metric a
  learner reports, e.g. the loss of one epoch: ``experience, epoch, step, name, value``),
  ``logs/csv/accuracy.csv`` (one row per experience: the row of the accuracy matrix, the accuracy on the classes
  seen so far, the runner's training loss of that experience and the wall time) and, at the end,
  ``logs/csv/metrics.csv``. Every file is rewritten atomically after each experience; a resumed run keeps the
  rows of the experiences before the checkpoint and drops the rest.
- ``tensorboard``: event files in ``logs/tensorboard/`` (``torch.utils.tensorboard``): scalars
  ``train/<name>`` (per learner report, step = running count), ``train/loss_after_experience``,
  ``accuracy/exp<j>`` and ``accuracy/seen`` (step = experience), ``time/wall_s``, ``metrics/<metric>`` at the end,
  and texts ``config`` (JSON) and ``accuracy_matrix`` (a table).
- ``wandb``: a W&B run in ``logs/wandb/``, offline unless ``WANDB_MODE`` says otherwise (needs the optional
  extra: ``pip install 'lifelong[wandb]'``); the same scalars, the config, the final metrics in the summary and
  the accuracy matrix as a table.

Training loss: the runner logs, for every experience, the cross-entropy of the learner's ``predict`` on that
experience's training data after training on it (``loss_after_experience``). Per-epoch losses come from the
learner itself, through ``RunContext.log_metric`` (``incremental/learner.py``); a learner that does not call it
reports none. ``epoch_loss_plugin`` is the Avalanche plugin through which every Avalanche-backed strategy
reports its mean training loss per epoch; learners with their own loop (DER, ALADE-SNN) call it themselves.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from lifelong.incremental.results import to_json
from lifelong.platform.atomic import atomic_write_text
from lifelong.platform.config import ConfigError

#: the loggers ``loggers`` may name, and the module each needs
LOGGERS: dict[str, str] = {"csv": "csv", "tensorboard": "tensorboard", "wandb": "wandb"}
INSTALL_HINT: dict[str, str] = {
    "tensorboard": "pip install tensorboard (a dependency of lifelong; reinstall it)",
    "wandb": "pip install 'lifelong[wandb]' (the optional W&B extra)",
}
LOG_FOLDER = "logs"


def check_loggers(names: Sequence[str]) -> list[str]:
    """The logger names, checked: each known and its library importable; ``ConfigError`` naming the allowed ones."""
    checked: list[str] = []
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"loggers: {name!r} is not allowed; allowed values: {', '.join(LOGGERS)}")
        if importlib.util.find_spec(LOGGERS[name]) is None:
            raise ConfigError(f"loggers: {name} is not available here ({LOGGERS[name]} is not installed): "
                              f"{INSTALL_HINT.get(name, 'install it')}; allowed values: {', '.join(LOGGERS)}")
        if name not in checked:
            checked.append(name)
    return checked


class RunLogger:
    """One logger; every method is a no-op here."""

    def log_metric(self, name: str, value: float, experience: int, epoch: int | None, step: int) -> None:
        """A metric the learner reported while training ``experience`` (``step``: running count of ``name``)."""

    def log_experience(self, step: int, accuracies: Sequence[float], seen_accuracy: float,
                       train_loss: float | None, wall_time_s: float) -> None:
        """The runner's report after experience ``step``: the row of the accuracy matrix and more."""

    def finish(self, results: dict[str, Any]) -> None:
        """The run's results (metrics, accuracy matrix) once it is complete."""

    def close(self) -> None:
        """Flush and release files."""


def _matrix_markdown(matrix: Sequence[Sequence[float]]) -> str:
    n = len(matrix[0]) if matrix else 0
    lines = ["| after step | " + " | ".join(f"exp{j}" for j in range(n)) + " |",
             "|---" * (n + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(f"{100 * v:.2f}" for v in row) + " |" for i, row in enumerate(matrix)]
    return "\n".join(lines)


class CsvLogger(RunLogger):
    """``logs/csv/``: config.json, train.csv, accuracy.csv, metrics.csv (see the module docstring)."""

    TRAIN_HEADER = ["experience", "epoch", "step", "name", "value"]

    def __init__(self, folder: Path, config: dict[str, Any], n_experiences: int, start: int) -> None:
        self.folder = folder
        self.n = n_experiences
        self.accuracy_header = (["after_step"] + [f"exp{j}" for j in range(n_experiences)]
                                + ["seen_accuracy", "train_loss", "wall_time_s"])
        self.train_rows = [r for r in self._read("train.csv") if int(r[0]) < start]
        self.accuracy_rows = [r for r in self._read("accuracy.csv") if int(r[0]) < start]
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "config.json", to_json(config) + "\n")

    def _read(self, name: str) -> list[list[str]]:
        path = self.folder / name
        if not path.is_file():
            return []
        rows = list(csv.reader(io.StringIO(path.read_text())))
        return [r for r in rows[1:] if r]

    def _write(self, name: str, header: list[str], rows: list[list[Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_text(self.folder / name, buffer.getvalue())

    def log_metric(self, name: str, value: float, experience: int, epoch: int | None, step: int) -> None:
        self.train_rows.append([experience, "" if epoch is None else epoch, step, name, repr(float(value))])

    def log_experience(self, step: int, accuracies: Sequence[float], seen_accuracy: float,
                       train_loss: float | None, wall_time_s: float) -> None:
        self.accuracy_rows.append([step, *(f"{a:.6f}" for a in accuracies), f"{seen_accuracy:.6f}",
                                   "" if train_loss is None else f"{train_loss:.6f}", f"{wall_time_s:.3f}"])
        self._write("train.csv", self.TRAIN_HEADER, self.train_rows)
        self._write("accuracy.csv", self.accuracy_header, self.accuracy_rows)

    def finish(self, results: dict[str, Any]) -> None:
        from lifelong.incremental.results import SCALAR_METRICS

        self._write("train.csv", self.TRAIN_HEADER, self.train_rows)
        self._write("metrics.csv", ["metric", "value"],
                    [[k, f"{results[k]:.6f}"] for k in (*SCALAR_METRICS, "wall_time_s")])


class TensorBoardLogger(RunLogger):
    """Event files in ``logs/tensorboard/`` through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, folder: Path, config: dict[str, Any], start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start if start else None)
        if not start:
            self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_metric(self, name: str, value: float, experience: int, epoch: int | None, step: int) -> None:
        self.writer.add_scalar(f"train/{name}", value, step)

    def log_experience(self, step: int, accuracies: Sequence[float], seen_accuracy: float,
                       train_loss: float | None, wall_time_s: float) -> None:
        for j, acc in enumerate(accuracies):
            self.writer.add_scalar(f"accuracy/exp{j}", acc, step)
        self.writer.add_scalar("accuracy/seen", seen_accuracy, step)
        if train_loss is not None:
            self.writer.add_scalar("train/loss_after_experience", train_loss, step)
        self.writer.add_scalar("time/wall_s", wall_time_s, step)
        self.writer.flush()

    def finish(self, results: dict[str, Any]) -> None:
        from lifelong.incremental.results import SCALAR_METRICS

        last = len(results["accuracy_matrix"]) - 1
        for key in SCALAR_METRICS:
            self.writer.add_scalar(f"metrics/{key}", results[key], last)
        self.writer.add_text("accuracy_matrix", _matrix_markdown(results["accuracy_matrix"]), last)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(RunLogger):
    """A W&B run in ``logs/wandb/``: offline unless ``WANDB_MODE`` says otherwise; quiet on stdout."""

    def __init__(self, folder: Path, config: dict[str, Any], run_name: str, group: str | None) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lifelong"), name=run_name, group=group,
                              dir=str(folder), mode=os.environ.get("WANDB_MODE", "offline"), config=config,
                              settings=wandb.Settings(silent=True))

    def log_metric(self, name: str, value: float, experience: int, epoch: int | None, step: int) -> None:
        self.run.log({f"train/{name}": value, "experience": experience,
                      **({"epoch": epoch} if epoch is not None else {})})

    def log_experience(self, step: int, accuracies: Sequence[float], seen_accuracy: float,
                       train_loss: float | None, wall_time_s: float) -> None:
        self.run.log({**{f"accuracy/exp{j}": a for j, a in enumerate(accuracies)}, "accuracy/seen": seen_accuracy,
                      **({"train/loss_after_experience": train_loss} if train_loss is not None else {}),
                      "time/wall_s": wall_time_s, "experience": step})

    def finish(self, results: dict[str, Any]) -> None:
        from lifelong.incremental.results import SCALAR_METRICS

        matrix = results["accuracy_matrix"]
        table = self.wandb.Table(columns=["after_step"] + [f"exp{j}" for j in range(len(matrix))],
                                 data=[[i, *row] for i, row in enumerate(matrix)])
        self.run.log({"accuracy_matrix": table})
        self.run.summary.update({f"metrics/{k}": results[k] for k in (*SCALAR_METRICS, "wall_time_s")})

    def close(self) -> None:
        self.run.finish()


class LoggerSet:
    """The run's loggers together; the runner calls it, and ``RunContext.log_metric`` reaches it through
    ``report``. Running counts of reported metrics are kept in the checkpoint (``state``) so that a resumed run
    continues the TensorBoard steps where they were."""

    def __init__(self, loggers: list[RunLogger], steps: dict[str, int] | None = None) -> None:
        self.loggers = loggers
        self.steps: dict[str, int] = dict(steps or {})
        self.experience = 0

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def report(self, name: str, value: float, epoch: int | None = None) -> None:
        step = self.steps.get(name, 0)
        self.steps[name] = step + 1
        for logger in self.loggers:
            logger.log_metric(name, float(value), self.experience, epoch, step)

    def log_experience(self, step: int, accuracies: Sequence[float], seen_accuracy: float,
                       train_loss: float | None, wall_time_s: float) -> None:
        for logger in self.loggers:
            logger.log_experience(step, list(accuracies), seen_accuracy, train_loss, wall_time_s)

    def finish(self, results: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.finish(results)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    def state(self) -> dict[str, Any]:
        return {"steps": dict(self.steps)}


def create_loggers(names: Sequence[str], out_dir: Path, config: dict[str, Any], *, n_experiences: int,
                   start: int = 0, steps: dict[str, int] | None = None, group: str | None = None) -> LoggerSet:
    """Open the named loggers under ``out_dir/logs`` (``start``: the first experience this process runs)."""
    folder = Path(out_dir) / LOG_FOLDER
    run_name = f"{config.get('strategy')}-{config.get('benchmark')}-seed{config.get('seed')}"
    loggers: list[RunLogger] = []
    for name in check_loggers(names):
        if name == "csv":
            loggers.append(CsvLogger(folder / "csv", config, n_experiences, start))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(folder / "tensorboard", config, start))
        elif name == "wandb":
            loggers.append(WandbLogger(folder / "wandb", config, run_name, group))
    return LoggerSet(loggers, steps)


def epoch_loss_plugin(context: Any, name: str = "train_loss") -> Any:
    """An Avalanche ``SupervisedPlugin`` that reports the mean training loss of every epoch through
    ``context.log_metric`` (``context``: the learner's ``RunContext``); a strategy adds it to its plugins."""
    from avalanche.core import SupervisedPlugin

    class EpochLoss(SupervisedPlugin):  # type: ignore[misc]
        reports_only = True  # no state worth a checkpoint: runs with and without loggers resume alike

        def __init__(self) -> None:
            super().__init__()
            self.total, self.count, self.epoch = 0.0, 0, 0

        def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            self.epoch = 0

        def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
            self.total, self.count = 0.0, 0

        def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
            n = len(strategy.mb_y)
            self.total += float(strategy.loss.detach()) * n
            self.count += n

        def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
            context.log_metric(name, self.total / max(self.count, 1), epoch=self.epoch)
            self.epoch += 1

    return EpochLoss()
