"""Nearest class mean on raw inputs, as a third-party ``lifelong`` strategy plugin.

A plugin is an importable module that calls ``lifelong.register``; the distribution's entry point in the
``lifelong.plugins`` group names it, and the registry imports it on first lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong import Capabilities, Learner, StrategyConfig, register


@dataclass
class NearestMeanConfig(StrategyConfig):
    """No training settings are used; ``normalize`` L2-normalises inputs before averaging."""

    normalize: bool = True


class _Means(nn.Module):
    def __init__(self, n_classes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("sums", torch.zeros(n_classes, dim))
        self.register_buffer("counts", torch.zeros(n_classes))


@register("strategy", "nearest-mean", config=NearestMeanConfig,
          summary="nearest class mean on raw inputs (example plugin)", capabilities=Capabilities(distributed_safe=False))
class NearestMean(Learner):
    """Adds every training sample to its class's running sum; predicts by cosine to the class means."""

    def __init__(self, config: NearestMeanConfig, context: Any) -> None:
        super().__init__(config, context)
        dim = 1
        for d in context.stream.input_shape:
            dim *= d
        self.model = _Means(context.stream.n_classes, dim).to(context.device)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).float()
        return nn.functional.normalize(flat, dim=1) if self.config.normalize else flat

    def train_experience(self, experience: Any) -> None:
        loader = torch.utils.data.DataLoader(experience.dataset, batch_size=256)
        for batch in loader:
            x, y = batch[0].to(self.context.device), batch[1].to(self.context.device)
            self.model.sums.index_add_(0, y, self._embed(x))
            self.model.counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        means = self.model.sums / self.model.counts.clamp(min=1).unsqueeze(1)
        scores = self._embed(x) @ nn.functional.normalize(means, dim=1).T
        return scores.masked_fill(self.model.counts == 0, float("-inf"))
