"""Samples as CPU tensors, for the learners that train from a DataLoader over an experience plus a replay
memory (``der`` and its subclasses): the memory as a dataset, one collate for both, and a whole dataset
materialised as ``(x, y)``."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class MemoryDataset(Dataset):
    """Exemplars as ``(x, y, task_label)`` like the experience datasets."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], 0


def collate(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(x, y, ...)`` samples whatever the type of y (int or 0-d tensor): memory and stream mix."""
    return torch.stack([torch.as_tensor(b[0]) for b in batch]), torch.tensor([int(b[1]) for b in batch])


def materialise(dataset: Any, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of a dataset as ``(x, y)`` tensors on the CPU."""
    xs, ys = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]).long())
    return torch.cat(xs), torch.cat(ys)
