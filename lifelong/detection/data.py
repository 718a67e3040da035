"""What a detection benchmark produces: clips of event frames with boxes per time bin (``produces="detection"``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DetectionSplit:
    """``frames [N, T, P, H, W]`` (float32 event counts per bin and polarity), and per clip and bin up to K
    objects: ``boxes [N, T, K, 4]`` (x0, y0, x1, y1 in pixels), ``labels [N, T, K]`` (-1: no object) and
    ``still [N, T, K]`` (the object has not moved for the whole bin, so it emitted no event in it)."""

    frames: Any
    boxes: np.ndarray
    labels: np.ndarray
    still: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def validate(self) -> None:
        n, t = self.labels.shape[:2]
        if tuple(self.frames.shape[:2]) != (n, t) or self.boxes.shape != (*self.labels.shape, 4) \
                or self.still.shape != self.labels.shape:
            raise ValueError(f"inconsistent detection split: frames {tuple(self.frames.shape)}, boxes "
                             f"{self.boxes.shape}, labels {self.labels.shape}, still {self.still.shape}")


@dataclass
class DetectionSet:
    """A train and a test split, the class names and where the data came from."""

    name: str
    train: DetectionSplit
    test: DetectionSplit
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """``(T, P, H, W)`` of one clip."""
        return tuple(int(d) for d in self.train.frames.shape[1:])
