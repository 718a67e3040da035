"""CenterNet's training targets, loss and decoding (Zhou, Wang and Kraehenbuehl 2019, "Objects as Points").

Taken: one heatmap per class whose peaks are object centres (a Gaussian around each centre cell, trained with
the penalty-reduced focal loss, alpha 2, beta 4, normalised by the number of objects), the box size and the
centre's offset within its cell regressed with L1 at the centre cells only (weights 0.1 and 1), and decoding
by keeping the 3x3 local maxima of the heatmap (no NMS) and the ``top_k`` best per image.
Chosen: the Gaussian's standard deviation is ``max(0.5, 0.15 * (w + h) / 2 / stride)`` cells, simpler than
CenterNet's overlap-based radius and about as sharp for the small boxes here (2 to 4 cells across); the size
is predicted in input pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.detection.metrics import ImageBoxes

SIZE_WEIGHT, OFFSET_WEIGHT = 0.1, 1.0


def make_targets(boxes: np.ndarray, labels: np.ndarray, n_classes: int, map_hw: tuple[int, int], stride: int,
                 ) -> dict[str, torch.Tensor]:
    """Targets of ``[N, K]`` objects per image (``boxes [N, K, 4]``, ``labels [N, K]``, -1 = none): heatmap
    ``[N, C, h, w]``, and per object its flat centre cell, size, offset and a validity mask ``[N, K]``."""
    n, k = labels.shape
    h, w = map_hw
    heat = np.zeros((n, n_classes, h, w), np.float32)
    index = np.zeros((n, k), np.int64)
    size = np.zeros((n, k, 2), np.float32)
    offset = np.zeros((n, k, 2), np.float32)
    valid = labels >= 0
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    for i, j in zip(*np.nonzero(valid)):
        x0, y0, x1, y1 = boxes[i, j]
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sigma = max(0.5, 0.15 * ((x1 - x0) + (y1 - y0)) / 2 / stride)
        gauss = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        np.maximum(heat[i, labels[i, j]], gauss, out=heat[i, labels[i, j]])
        index[i, j] = iy * w + ix
        size[i, j] = (x1 - x0, y1 - y0)
        offset[i, j] = (cx - ix, cy - iy)
    return {"heatmap": torch.from_numpy(heat), "index": torch.from_numpy(index), "size": torch.from_numpy(size),
            "offset": torch.from_numpy(offset), "valid": torch.from_numpy(valid)}


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, summed and divided by the number of peaks."""
    pred = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def _gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``maps [N, 2, h, w]`` at flat cells ``index [N, K]``: ``[N, K, 2]``."""
    flat = maps.flatten(2).transpose(1, 2)
    return flat.gather(1, index.unsqueeze(-1).expand(-1, -1, flat.shape[-1]))


def detection_loss(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Focal heatmap loss + 0.1 L1 size + 1 L1 offset, over images ``[N, ...]``."""
    valid = targets["valid"].unsqueeze(-1).float()
    n_obj = valid.sum().clamp(min=1.0)
    size = (_gather(out["size"], targets["index"]) - targets["size"]).abs().mul(valid).sum() / n_obj
    offset = (_gather(out["offset"], targets["index"]) - targets["offset"]).abs().mul(valid).sum() / n_obj
    return focal_loss(out["heatmap"], targets["heatmap"]) + SIZE_WEIGHT * size + OFFSET_WEIGHT * offset


@torch.no_grad()
def decode(out: dict[str, torch.Tensor], stride: int, top_k: int = 20) -> list[ImageBoxes]:
    """Detections of images ``[N, ...]``: the ``top_k`` 3x3 local maxima of the class heatmaps, with boxes."""
    heat = torch.sigmoid(out["heatmap"].float())
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    n, c, h, w = heat.shape
    scores, flat = peaks.flatten(1).topk(min(top_k, c * h * w), dim=1)
    cls, cell = flat // (h * w), flat % (h * w)
    size, offset = _gather(out["size"].float(), cell), _gather(out["offset"].float(), cell)
    cx = ((cell % w).float() + offset[..., 0]) * stride
    cy = ((cell // w).float() + offset[..., 1]) * stride
    boxes = torch.stack([cx - size[..., 0] / 2, cy - size[..., 1] / 2, cx + size[..., 0] / 2, cy + size[..., 1] / 2], -1)
    keep = scores > 0
    return [ImageBoxes(boxes[i][keep[i]].cpu().numpy(), cls[i][keep[i]].cpu().numpy(),
                       scores=scores[i][keep[i]].cpu().numpy()) for i in range(n)]
