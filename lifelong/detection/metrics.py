"""Mean average precision as COCO defines it (Lin et al. 2014; pycocotools' ``COCOeval`` for boxes), computed here.

Per class, over all images: detections sorted by score (at most ``max_dets`` per image and class, the best), each matched
greedily to the unmatched ground-truth box of the same image and class with the highest IoU at or above the
threshold; precision is made monotone (the running maximum from the right) and read at the 101 recall points
0, 0.01, ..., 1 (the precision at the first recall at or above each point, 0 past the last); AP is their mean.
mAP is the mean over the classes that have ground truth; ``map_50`` uses IoU 0.5, ``map`` the mean over
IoU 0.50, 0.55, ..., 0.95. Boxes are ``x0, y0, x1, y1`` in pixels and IoU uses ``x1 - x0`` as the width, as
pycocotools does with ``x, y, w, h`` (a test compares the two). No area ranges (the ``all`` range only).

Ignored ground truth (``ignore``): as COCO's crowd and out-of-range boxes, they are not counted as positives,
a detection matched to one (only when no counted box is left to match) is dropped from the ranking, and
counted boxes are matched first. ``bench/events.py`` uses it to score only the objects that have stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
RECALL_POINTS: np.ndarray = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageBoxes:
    """Boxes of one image: ``boxes [k, 4]`` (x0, y0, x1, y1), ``labels [k]``, and ``scores [k]`` (detections)
    or ``ignore [k]`` (ground truth)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    ignore: np.ndarray | None = field(default=None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a [n, 4]`` with every box of ``b [m, 4]``: ``[n, m]``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match_image(det: np.ndarray, gt: np.ndarray, gt_ignore: np.ndarray, thresholds: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching in one image and class (detections sorted by score): ``matched [n_thr, n_det]``
    (True: a true positive) and ``dropped [n_thr, n_det]`` (matched to an ignored box)."""
    order = np.argsort(gt_ignore, kind="stable")  # counted boxes first
    gt, gt_ignore = gt[order], gt_ignore[order]
    ious = box_iou(det, gt)
    matched = np.zeros((len(thresholds), len(det)), bool)
    dropped = np.zeros_like(matched)
    for ti, thr in enumerate(thresholds):
        taken = np.zeros(len(gt), bool)
        for d in range(len(det)):
            best, best_iou = -1, min(float(thr), 1 - 1e-10)
            for g in range(len(gt)):
                if taken[g]:
                    continue
                if best > -1 and not gt_ignore[best] and gt_ignore[g]:
                    break  # a counted match is found; ignored boxes come after
                if ious[d, g] < best_iou:
                    continue
                best, best_iou = g, ious[d, g]
            if best > -1:
                taken[best] = True
                dropped[ti, d] = gt_ignore[best]
                matched[ti, d] = not gt_ignore[best]
    return matched, dropped


def average_precision(tp: np.ndarray, scores: np.ndarray, n_positive: int) -> float:
    """COCO's 101-point interpolated AP of detections with true-positive flags ``tp`` and ``scores``."""
    if n_positive == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order].astype(np.float64)
    tps, fps = np.cumsum(tp), np.cumsum(1 - tp)
    recall = tps / n_positive
    precision = tps / (tps + fps + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    values = np.array([precision[i] if i < len(precision) else 0.0 for i in idx])
    return float(values.mean())


def _class_ap(dets: list[ImageBoxes], gts: list[ImageBoxes], cls: int, thresholds: np.ndarray, max_dets: int,
              ) -> tuple[np.ndarray, int]:
    """AP of class ``cls`` at each threshold, and its number of counted ground-truth boxes."""
    tp_parts: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    n_positive = 0
    for det, gt in zip(dets, gts):
        g_sel = gt.labels == cls
        g_ignore = (gt.ignore[g_sel] if gt.ignore is not None else np.zeros(int(g_sel.sum()), bool)).astype(bool)
        n_positive += int((~g_ignore).sum())
        scores = det.scores if det.scores is not None else np.ones(len(det.labels))
        mine = np.flatnonzero(det.labels == cls)
        d_sel = mine[np.argsort(-scores[mine], kind="mergesort")][:max_dets]  # the image's best of this class
        if not len(d_sel):
            continue
        matched, dropped = _match_image(det.boxes[d_sel], gt.boxes[g_sel], g_ignore, thresholds)
        tp_parts.append(np.where(dropped, -1, matched.astype(np.int8)))
        score_parts.append(scores[d_sel])
    if not tp_parts:
        return np.array([0.0 if n_positive else float("nan")] * len(thresholds)), n_positive
    tp_all, s_all = np.concatenate(tp_parts, axis=1), np.concatenate(score_parts)
    aps = []
    for ti in range(len(thresholds)):
        keep = tp_all[ti] >= 0
        aps.append(average_precision(tp_all[ti][keep] == 1, s_all[keep], n_positive))
    return np.array(aps), n_positive


def mean_average_precision(dets: list[ImageBoxes], gts: list[ImageBoxes], n_classes: int,
                           max_dets: int = 100) -> dict[str, object]:
    """``map_50``, ``map`` (0.5:0.95) and the per-class APs of detections ``dets`` against ``gts`` (one entry
    per image, in the same order); classes with no counted ground truth are left out of the means."""
    if len(dets) != len(gts):
        raise ValueError(f"{len(dets)} images of detections for {len(gts)} images of ground truth")
    per_class: dict[int, np.ndarray] = {}
    for cls in range(n_classes):
        aps, n_positive = _class_ap(dets, gts, cls, IOU_THRESHOLDS, max_dets)
        if n_positive:
            per_class[cls] = aps
    if not per_class:
        return {"map_50": float("nan"), "map": float("nan"), "per_class_ap_50": {}, "per_class_ap": {}}
    stack = np.stack(list(per_class.values()))
    return {
        "map_50": float(stack[:, 0].mean()),
        "map": float(stack.mean()),
        "per_class_ap_50": {c: float(a[0]) for c, a in per_class.items()},
        "per_class_ap": {c: float(a.mean()) for c, a in per_class.items()},
    }
