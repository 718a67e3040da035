"""Training and evaluation of an event detector on a ``DetectionSet``: the loop, the predictions, the mAP
(all frames, per bin, and on the objects that have stopped), and the operations per frame."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lifelong.adapters.nets.hsvt import attention_macs
from lifelong.adapters.nets.spiking import ENERGY_PJ_PER_AC, ENERGY_PJ_PER_MAC, count_ops
from lifelong.detection.centernet import decode, detection_loss, make_targets
from lifelong.detection.data import DetectionSplit
from lifelong.detection.metrics import ImageBoxes, mean_average_precision


def _batch_targets(split: DetectionSplit, idx: np.ndarray, n_classes: int, map_hw: tuple[int, int], stride: int,
                   ) -> dict[str, torch.Tensor]:
    k = split.labels.shape[-1]
    return make_targets(split.boxes[idx].reshape(-1, k, 4), split.labels[idx].reshape(-1, k), n_classes, map_hw, stride)


def train_detector(model: nn.Module, split: DetectionSplit, n_classes: int, *, epochs: int, batch_size: int,
                   lr: float, weight_decay: float, seed: int, device: torch.device,
                   progress: Callable[[int, float], None] | None = None) -> list[float]:
    """AdamW with a cosine schedule over ``epochs``; returns the mean loss of each epoch."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, int(np.ceil(len(split) / batch_size)))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = np.random.default_rng(seed)
    stride = model.stride
    map_hw = (int(np.ceil(split.frames.shape[-2] / stride)), int(np.ceil(split.frames.shape[-1] / stride)))
    losses = []
    for epoch in range(epochs):
        order, total = rng.permutation(len(split)), 0.0
        for start in range(0, len(split), batch_size):
            idx = np.sort(order[start:start + batch_size])
            out = model(split.frames[idx].to(device))
            out = {k: v.flatten(0, 1) for k, v in out.items()}
            targets = {k: v.to(device) for k, v in _batch_targets(split, idx, n_classes, map_hw, stride).items()}
            loss = detection_loss(out, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(split))
        if progress is not None:
            progress(epoch, losses[-1])
    return losses


@torch.no_grad()
def predict(model: nn.Module, split: DetectionSplit, batch_size: int, device: torch.device, top_k: int = 20,
            ) -> list[ImageBoxes]:
    """Detections of every (clip, bin), clip-major."""
    model.to(device).eval()
    found: list[ImageBoxes] = []
    for start in range(0, len(split), batch_size):
        out = model(split.frames[start:start + batch_size].to(device))
        found += decode({k: v.flatten(0, 1) for k, v in out.items()}, model.stride, top_k)
    return found


def ground_truth(split: DetectionSplit, only_still: bool = False) -> list[ImageBoxes]:
    """The boxes of every (clip, bin), clip-major; with ``only_still`` the moving objects are ignored."""
    out = []
    for labels, boxes, still in zip(split.labels.reshape(-1, split.labels.shape[-1]),
                                    split.boxes.reshape(-1, *split.boxes.shape[-2:]),
                                    split.still.reshape(-1, split.still.shape[-1])):
        keep = labels >= 0
        out.append(ImageBoxes(boxes[keep], labels[keep], ignore=~still[keep] if only_still else None))
    return out


def evaluate(found: list[ImageBoxes], split: DetectionSplit, n_classes: int) -> dict[str, Any]:
    """mAP on all frames, per bin, and on the stopped objects (frames holding one; moving objects ignored)."""
    gts = ground_truth(split)
    n_bins = split.labels.shape[1]
    result: dict[str, Any] = {"all": mean_average_precision(found, gts, n_classes)}
    result["per_bin_map_50"] = [mean_average_precision(found[b::n_bins], gts[b::n_bins], n_classes)["map_50"]
                                for b in range(n_bins)]
    still = ground_truth(split, only_still=True)
    has = [i for i, g in enumerate(still) if g.ignore is not None and (~g.ignore).any()]
    result["still"] = mean_average_precision([found[i] for i in has], [still[i] for i in has], n_classes)
    result["still"]["frames"] = len(has)
    result["still"]["objects"] = int(split.still.sum())
    return result


@torch.no_grad()
def operations_per_frame(model: nn.Module, frames: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Per time bin of one clip: MACs (real-valued inputs, attention products included), synaptic operations
    (accumulates of layers fed with spikes, times their input rate) and the energy estimate of
    ``adapters/nets/spiking.py`` (4.6 pJ a MAC, 0.9 pJ an accumulate)."""
    model.to(device).eval()
    frames = frames.to(device)
    images = frames.shape[0] * frames.shape[1]
    count = count_ops(model, lambda: model(frames), images)
    attn = attention_macs(model) / images
    macs = count.macs + attn
    return {"macs": macs, "sops": count.sops, "attention_macs": attn, "dense_macs": count.dense_macs + attn,
            "energy_nj": (macs * ENERGY_PJ_PER_MAC + count.sops * ENERGY_PJ_PER_AC) * 1e-3}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds it took)``."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
