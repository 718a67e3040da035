"""Metrics, defined once. Every output names them with these definitions.

Accuracy matrix ``R[i][j]``: top-1 accuracy on the test data of experience j after training through
experience i (rows: training steps, columns: test experiences).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRIC_DEFINITIONS: dict[str, str] = {
    "accuracy_matrix": "R[i][j]: top-1 accuracy on the test data of experience j after training through experience i",
    "average_incremental_accuracy": "mean over steps i of the accuracy on all classes seen so far (iCaRL)",
    "last_accuracy": "accuracy on all classes after the final step",
    "forgetting": "mean over j < N of (max over i < N of R[i][j]) - R[N][j] (PyCIL/Mammoth)",
    "bwt": "backward transfer: mean over j < N of R[N][j] - R[j][j]",
}


def _weights(test_sizes: Sequence[int] | None, n: int) -> np.ndarray:
    return np.ones(n) if test_sizes is None else np.asarray(test_sizes, dtype=float)


def seen_accuracy(matrix: np.ndarray, step: int, test_sizes: Sequence[int] | None = None) -> float:
    """Accuracy on all classes seen through ``step``: test experiences 0..step pooled (weighted by size)."""
    w = _weights(test_sizes, matrix.shape[1])[: step + 1]
    return float(np.dot(matrix[step, : step + 1], w) / w.sum())


def average_incremental_accuracy(matrix: np.ndarray, test_sizes: Sequence[int] | None = None) -> float:
    return float(np.mean([seen_accuracy(matrix, i, test_sizes) for i in range(matrix.shape[0])]))


def last_accuracy(matrix: np.ndarray, test_sizes: Sequence[int] | None = None) -> float:
    return seen_accuracy(matrix, matrix.shape[0] - 1, test_sizes)


def forgetting(matrix: np.ndarray) -> float:
    """Mean drop from the best earlier accuracy to the final one, over all but the last experience."""
    n = matrix.shape[0] - 1
    if n < 1:
        return 0.0
    return float(np.mean([matrix[:n, j].max() - matrix[n, j] for j in range(n)]))


def backward_transfer(matrix: np.ndarray) -> float:
    n = matrix.shape[0] - 1
    if n < 1:
        return 0.0
    return float(np.mean([matrix[n, j] - matrix[j, j] for j in range(n)]))


def cil_metrics(matrix: Sequence[Sequence[float]], test_sizes: Sequence[int] | None = None) -> dict[str, float]:
    """All scalar metrics of a (square, fully filled) accuracy matrix.

    ``test_sizes`` weights the experiences when pooling "all classes seen so far" (so the accuracy is the
    per-sample accuracy on the union of their test sets); without it every experience counts equally.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"accuracy matrix must be square, got shape {m.shape}")
    return {
        "average_incremental_accuracy": average_incremental_accuracy(m, test_sizes),
        "last_accuracy": last_accuracy(m, test_sizes),
        "forgetting": forgetting(m),
        "bwt": backward_transfer(m),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
