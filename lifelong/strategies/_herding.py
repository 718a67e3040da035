"""iCaRL herding and a class-ordered exemplar memory, shared by ``der`` and ``alade-snn``.

Herding follows iCaRL (Rebuffi et al., CVPR 2017) as PyCIL implements it: features are L2-normalised, and the
k-th exemplar is the sample that brings the mean of the k chosen ones closest to the class mean; a sample is
never chosen twice. The memory keeps each class's exemplars in herding order, so shrinking a class to ``m``
exemplars keeps its first ``m`` (iCaRL's reduction). It is plain tensors, so it saves as a state dict.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def herding_select(features: torch.Tensor, m: int) -> list[int]:
    """Indices of ``m`` exemplars of one class, in herding order, from its ``[n, d]`` features."""
    n = features.shape[0]
    m = min(m, n)
    if m <= 0:
        return []
    f = features.double()
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-8)
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for k in range(1, m + 1):
        candidates = (running.unsqueeze(0) + f) / k
        dist = (mu.unsqueeze(0) - candidates).norm(dim=1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += f[i]
    return chosen


def balanced_indices(y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of a class-balanced subset: every class down-sampled at random to the smallest class's count."""
    classes = torch.unique(y)
    counts = torch.stack([(y == c).sum() for c in classes])
    n = int(counts.min())
    picked = []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        perm = torch.randperm(len(idx), generator=generator)[:n]
        picked.append(idx[perm])
    return torch.cat(picked).sort().values


class ExemplarMemory:
    """Exemplars of the classes seen so far, each class's samples contiguous and in herding order."""

    def __init__(self, total_size: int) -> None:
        if total_size < 0:
            raise ValueError(f"memory size must be non-negative, got {total_size}")
        self.total_size = total_size
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.y is None else int(self.y.numel())

    def classes(self) -> list[int]:
        return [] if self.y is None else sorted(int(c) for c in torch.unique(self.y))

    def per_class(self, n_classes: int) -> int:
        """Exemplars per class for a fixed total budget over ``n_classes`` (iCaRL: total // classes)."""
        return self.total_size // max(1, n_classes)

    def update(
        self,
        x_new: torch.Tensor,
        y_new: torch.Tensor,
        feature_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Shrink the old classes and add herding-chosen exemplars of the classes in ``y_new``.

        ``x_new`` are the new classes' samples as the model sees them at evaluation (no augmentation);
        ``feature_fn`` maps a batch of them to the features herding works on.
        """
        new_classes = sorted(int(c) for c in torch.unique(y_new))
        old_classes = [c for c in self.classes() if c not in new_classes]
        m = self.per_class(len(old_classes) + len(new_classes))
        xs, ys = [], []
        if self.x is not None and self.y is not None:
            for c in old_classes:
                idx = torch.nonzero(self.y == c).flatten()[:m]
                xs.append(self.x[idx])
                ys.append(self.y[idx])
        for c in new_classes:
            idx = torch.nonzero(y_new == c).flatten()
            feats = torch.cat([feature_fn(x_new[idx[i : i + 256]]).detach().cpu() for i in range(0, len(idx), 256)])
            order = herding_select(feats, m)
            sel = idx[torch.as_tensor(order, dtype=torch.long)]
            xs.append(x_new[sel].cpu())
            ys.append(y_new[sel].cpu())
        if xs and sum(len(v) for v in ys):
            self.x = torch.cat(xs)
            self.y = torch.cat(ys).long()
        else:
            self.x, self.y = None, None

    def state_dict(self) -> dict[str, Any]:
        return {"total_size": self.total_size, "x": self.x, "y": self.y}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_size = int(state.get("total_size", self.total_size))
        self.x = state.get("x")
        self.y = state.get("y")
