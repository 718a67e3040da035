"""results.json, CSV tables and PNG plots of class-incremental runs and comparisons.

Every JSON file is strict JSON that any parser reads (``json.dumps(..., allow_nan=False)``): a value that is
undefined as a number (NaN, ±inf: a loss that diverged, a metric of an empty set) is written as ``null``
(``to_json``). A run's results.json is written last, after its CSV and plots, and the old one is removed first,
so a results.json on disk always belongs to the files beside it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform as _platform
import threading
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lifelong.incremental.metrics import METRIC_DEFINITIONS, mean_std, seen_accuracy
from lifelong.incremental.plots import heatmap_png, line_plot_png
from lifelong.platform.atomic import atomic_write_bytes, atomic_write_text

SCALAR_METRICS: tuple[str, ...] = ("average_incremental_accuracy", "last_accuracy", "forgetting", "bwt")
SHORT_NAMES = {"average_incremental_accuracy": "AIA", "last_accuracy": "last", "forgetting": "forgetting", "bwt": "BWT"}


def package_versions() -> dict[str, str]:
    """The versions of Python and the packages a result depends on (read once per process: the package
    metadata scan costs as much as a short training step)."""
    return dict(_package_versions())


@lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    versions = {"python": _platform.python_version()}
    for name in ("lifelong", "torch", "torchvision", "avalanche-lib", "numpy", "transformers", "peft", "open_clip_torch", "faiss-cpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON of ``value``: non-finite numbers become ``null`` (see the module docstring)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_run(out: Path, results: dict[str, Any], before_json: Callable[[], None] | None = None) -> None:
    """results.json, results.csv (the accuracy matrix and the metrics) and the two plots of one run.

    The CSV and the plots are written side by side (each atomically: their fsyncs overlap instead of queueing),
    then ``before_json`` is called (the runner waits there for the run's last checkpoint), then results.json.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)  # until the new one is written, no results.json
    results = dict(results, metric_definitions=METRIC_DEFINITIONS)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    matrix = results["accuracy_matrix"]
    writer.writerow(["after_step"] + [f"exp{j}" for j in range(len(matrix))] + ["seen_accuracy"])
    for i, row in enumerate(matrix):
        writer.writerow([i] + [f"{v:.4f}" for v in row] + [f"{results['seen_accuracy'][i]:.4f}"])
    writer.writerow([])
    for key in SCALAR_METRICS:
        writer.writerow([key, f"{results[key]:.4f}"])
    plots = {out / name: data for name, data in run_plots(results).items()}
    write_concurrently({out / "results.csv": buffer.getvalue().encode("utf-8"), **plots})
    if before_json is not None:
        before_json()
    atomic_write_text(out / "results.json", to_json(results) + "\n")


def write_concurrently(files: dict[Path, bytes]) -> None:
    """Write each file atomically, all at once in threads (the waits for the disk overlap); the first error is
    raised once every write has ended, and a failed write leaves no temporary file."""
    errors: list[BaseException] = []

    def write(path: Path, data: bytes) -> None:
        try:
            atomic_write_bytes(path, data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=item) for item in files.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def run_plots(results: dict[str, Any]) -> dict[Path, bytes]:
    """accuracy_matrix.png (the heatmap of R) and accuracy_curve.png (accuracy on the classes seen so far), as
    PNG bytes by file name."""
    title = f"R[i][j] (%): {results['strategy']} on {results['benchmark']} (seed {results['seed']})"
    return {
        Path("accuracy_matrix.png"): heatmap_png(results["accuracy_matrix"], title),
        Path("accuracy_curve.png"): line_plot_png([{"label": results["strategy"], "values": results["seen_accuracy"]}],
                                                  xlabel="training step", ylabel="accuracy on classes seen so far (%)"),
    }


def plot_run(out: Path, results: dict[str, Any]) -> None:
    """Write the two plots of one run into ``out``."""
    write_concurrently({out / name: data for name, data in run_plots(results).items()})


def seen_curve(matrix: Sequence[Sequence[float]], test_sizes: Sequence[int]) -> list[float]:
    m = np.asarray(matrix, dtype=float)
    return [seen_accuracy(m, i, test_sizes) for i in range(m.shape[0])]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (over seeds) of every scalar metric and of the accuracy curve, per strategy."""
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], []).append(run)
    summary: dict[str, Any] = {}
    for strategy, group in by_strategy.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in group], "n_runs": len(group)}
        for key in SCALAR_METRICS + ("wall_time_s",):
            mean, std = mean_std([r[key] for r in group])
            entry[key] = {"mean": mean, "std": std}
        curves = np.asarray([r["seen_accuracy"] for r in group])
        entry["seen_accuracy"] = {"mean": curves.mean(0).tolist(), "std": (curves.std(0, ddof=1) if len(group) > 1 else np.zeros(curves.shape[1])).tolist()}
        summary[strategy] = entry
    return summary


def write_summary(out: Path, benchmark: str, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": benchmark, "strategies": summary, "metric_definitions": METRIC_DEFINITIONS}
    atomic_write_text(out / "summary.json", to_json(payload) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["strategy", "n_runs"] + [f"{k}_{s}" for k in SCALAR_METRICS + ("wall_time_s",) for s in ("mean", "std")])
    for strategy, entry in summary.items():
        writer.writerow([strategy, entry["n_runs"]] + [f"{entry[k][s]:.4f}" for k in SCALAR_METRICS + ("wall_time_s",) for s in ("mean", "std")])
    atomic_write_text(out / "summary.csv", buffer.getvalue())
    series = [{"label": strategy, "values": entry["seen_accuracy"]["mean"], "band": entry["seen_accuracy"]["std"]}
              for strategy, entry in summary.items()]
    atomic_write_bytes(out / "comparison.png", line_plot_png(
        series, xlabel="training step", ylabel="accuracy on classes seen so far (%)",
        title=f"{benchmark}: mean ± std over seeds (legend: last step, %)", size=(600, 360), legend_columns=2,
        final_in_legend=True))


#: what the four columns of every table mean, in one line (the full definitions: METRIC_DEFINITIONS)
METRICS_LINE = ("AIA: mean over steps of the accuracy on all classes seen so far; last: accuracy on all classes "
                "after the last step; forgetting: mean drop from each old experience's best accuracy to its last; "
                "BWT: mean last minus just-learned accuracy of each old experience (negative: forgotten)")


def format_summary_table(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per strategy, AIA / last / forgetting / BWT as mean ± std in percent."""
    header = f"{'strategy':<18}" + "".join(f"{SHORT_NAMES[k]:>18}" for k in SCALAR_METRICS) + f"{'time s':>10}"
    lines = [header, "-" * len(header)]
    for strategy, entry in summary.items():
        cells = "".join(f"{100 * entry[k]['mean']:>11.2f} ± {100 * entry[k]['std']:<4.2f}" for k in SCALAR_METRICS)
        lines.append(f"{strategy:<18}{cells}{entry['wall_time_s']['mean']:>10.1f}")
    return "\n".join(lines)


def format_run_table(results: dict[str, Any]) -> str:
    n = len(results["accuracy_matrix"])
    lines = [f"{results['strategy']} on {results['benchmark']} (seed {results['seed']}), accuracy matrix R[i][j] in %:"]
    lines.append("step " + "".join(f"{'exp' + str(j):>8}" for j in range(n)) + f"{'seen':>8}")
    for i, row in enumerate(results["accuracy_matrix"]):
        lines.append(f"{i:>4} " + "".join(f"{100 * v:>8.1f}" for v in row) + f"{100 * results['seen_accuracy'][i]:>8.1f}")
    lines.append("  ".join(f"{SHORT_NAMES[k]} {100 * results[k]:.2f}" for k in SCALAR_METRICS) + f"  time {results['wall_time_s']:.1f} s")
    return "\n".join(lines)
