"""COCO-style mAP computed by the project: hand-worked cases, and pycocotools on random cases when installed."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from lifelong.detection.metrics import ImageBoxes, average_precision, box_iou, mean_average_precision


def gt(boxes, labels, ignore=None) -> ImageBoxes:
    return ImageBoxes(np.array(boxes, float).reshape(-1, 4), np.array(labels, int),
                      ignore=None if ignore is None else np.array(ignore, bool))


def det(boxes, labels, scores) -> ImageBoxes:
    return ImageBoxes(np.array(boxes, float).reshape(-1, 4), np.array(labels, int), scores=np.array(scores, float))


def test_iou_by_hand() -> None:
    assert box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)
    assert box_iou([[0, 0, 2, 2]], [[2, 2, 3, 3]])[0, 0] == 0.0
    assert box_iou([[0, 0, 4, 4]], [[0, 0, 4, 2]])[0, 0] == pytest.approx(0.5)


def test_a_perfect_detection_scores_one_and_a_miss_zero() -> None:
    truth = [gt([[10, 10, 20, 20]], [0])]
    assert mean_average_precision([det([[10, 10, 20, 20]], [0], [0.9])], truth, 1)["map"] == pytest.approx(1.0)
    assert mean_average_precision([det([[40, 40, 50, 50]], [0], [0.9])], truth, 1)["map"] == 0.0
    assert mean_average_precision([det(np.zeros((0, 4)), [], [])], truth, 1)["map"] == 0.0


def test_a_box_of_iou_0_58_counts_at_0_5_and_0_55_only() -> None:
    # gt 10x10; detection shifted 2.7 pixels: inter 73, union 127, IoU 0.575
    result = mean_average_precision([det([[12.7, 10, 22.7, 20]], [0], [0.8])], [gt([[10, 10, 20, 20]], [0])], 1)
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(0.2)  # 2 of the 10 thresholds


def test_precision_recall_by_hand() -> None:
    # two objects; detections ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # envelope: 1 up to recall 0.5 (51 points), 2/3 from 0.51 to 1 (50 points)
    truth = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    found = [det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7])]
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert mean_average_precision(found, truth, 1)["map_50"] == pytest.approx(expected, abs=1e-9)
    assert average_precision(np.array([1, 0, 1], bool), np.array([0.9, 0.8, 0.7]), 2) == pytest.approx(expected)


def test_a_duplicate_is_a_false_positive_and_classes_are_averaged() -> None:
    truth = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    # class 0: the duplicate ranked second is a FP after the TP: AP 1; class 1: missed: AP 0
    found = [det([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])]
    result = mean_average_precision(found, truth, 3)  # class 2 has no ground truth: left out
    assert result["per_class_ap_50"] == {0: pytest.approx(1.0), 1: 0.0} and result["map_50"] == pytest.approx(0.5)
    # ranked first, the duplicate costs precision: FP then TP, precision 1/2 at recall 1
    found = [det([[0, 0, 10, 10], [0, 1, 10, 11]], [0, 0], [0.8, 0.9])]
    assert mean_average_precision(found, truth, 2)["per_class_ap_50"][0] == pytest.approx(1.0)


def test_ignored_boxes_are_not_counted_and_their_detections_dropped() -> None:
    truth = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], ignore=[False, True])]
    # a detection on the ignored box, ranked first, neither helps nor hurts
    found = [det([[20, 20, 30, 30], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])]
    assert mean_average_precision(found, truth, 1)["map_50"] == pytest.approx(1.0)
    # a detection elsewhere is still a false positive
    found = [det([[50, 50, 60, 60], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])]
    assert mean_average_precision(found, truth, 1)["map_50"] == pytest.approx(0.5, abs=1e-9)


def _random_case(rng: np.random.Generator, n_images: int, n_classes: int) -> tuple[list, list]:
    gts, dets = [], []
    for _ in range(n_images):
        k = rng.integers(0, 4)
        xy = rng.uniform(0, 50, (k, 2))
        wh = rng.uniform(4, 20, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, n_classes, k)
        gts.append(gt(boxes, labels))
        m = rng.integers(0, 6)
        pick = rng.integers(0, max(k, 1), m)
        jitter = rng.normal(0, 3, (m, 4))
        base = boxes[pick] if k else rng.uniform(0, 50, (m, 4))
        dboxes = np.concatenate([np.minimum(base[:, :2], base[:, 2:]), np.maximum(base[:, :2], base[:, 2:])], 1)
        dboxes = dboxes + jitter
        dboxes[:, 2:] = np.maximum(dboxes[:, 2:], dboxes[:, :2] + 1)
        dlabels = np.where(rng.uniform(size=m) < 0.8, labels[pick] if k else 0, rng.integers(0, n_classes, m))
        dets.append(det(dboxes, dlabels, np.round(rng.uniform(size=m), 2)))  # rounded: ties happen
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_same_numbers_as_pycocotools(seed: int) -> None:
    pytest.importorskip("pycocotools", reason="pycocotools is in the test extra; without it only the hand cases run")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    dets, gts = _random_case(rng, 30, 3)
    images, annotations, results = [], [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        images.append({"id": i, "width": 80, "height": 80})
        for b, label in zip(g.boxes, g.labels):
            w, h = b[2] - b[0], b[3] - b[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, label, s in zip(d.boxes, d.labels, d.scores):
            results.append({"image_id": i, "category_id": int(label), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                            "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations,
                        "categories": [{"id": c} for c in range(3)]}
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = mean_average_precision(dets, gts, 3)
    assert ours["map"] == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert ours["map_50"] == pytest.approx(evaluator.stats[1], abs=1e-9)
