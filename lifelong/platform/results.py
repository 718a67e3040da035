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
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lifelong.platform.atomic import atomic_write_bytes, atomic_write_text
from lifelong.platform.metrics import METRIC_DEFINITIONS, mean_std, seen_accuracy

SCALAR_METRICS: tuple[str, ...] = ("average_incremental_accuracy", "last_accuracy", "forgetting", "bwt")
SHORT_NAMES = {"average_incremental_accuracy": "AIA", "last_accuracy": "last", "forgetting": "forgetting", "bwt": "BWT"}


def package_versions() -> dict[str, str]:
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


def write_run(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.csv (the accuracy matrix and the metrics) and the two plots of one run."""
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
    atomic_write_text(out / "results.csv", buffer.getvalue())
    plot_run(out, results)
    atomic_write_text(out / "results.json", to_json(results) + "\n")


def _savefig(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)  # a fixed canvas: bbox_inches="tight" would render twice
    atomic_write_bytes(path, buffer.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(out: Path, results: dict[str, Any]) -> None:
    plt = _pyplot()
    matrix = np.asarray(results["accuracy_matrix"])
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.6 + 0.6 * n, 1.2 + 0.55 * n))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w" if matrix[i, j] < 0.6 else "k", fontsize=8)
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training step i")
    ax.set_title(f"R[i][j]: {results['strategy']} on {results['benchmark']} (seed {results['seed']})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.subplots_adjust(left=0.14, bottom=0.14, top=0.9)
    _savefig(fig, out / "accuracy_matrix.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, n + 1), results["seen_accuracy"], marker="o", label=results["strategy"])
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy on classes seen so far")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.14, bottom=0.16)
    _savefig(fig, out / "accuracy_curve.png")
    plt.close(fig)


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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for strategy, entry in summary.items():
        mean = np.asarray(entry["seen_accuracy"]["mean"])
        std = np.asarray(entry["seen_accuracy"]["std"])
        steps = np.arange(1, len(mean) + 1)
        ax.plot(steps, mean, marker="o", label=strategy)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy on classes seen so far")
    ax.set_title(f"{benchmark}: mean ± std over seeds", fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.12, bottom=0.15)
    _savefig(fig, out / "comparison.png")
    plt.close(fig)


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
