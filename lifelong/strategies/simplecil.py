"""``simplecil``: SimpleCIL — class prototypes of a frozen pre-trained encoder, nothing trained.

Follows Zhou, Cai, Ye, Zhan and Liu, "Revisiting class-incremental learning with pre-trained models:
generalizability and adaptivity are all you need" (arXiv 2303.07338, IJCV 2024), the baseline that
pre-trained-model CIL papers now report: keep the pre-trained encoder frozen, and for each new class set the
classifier weight to the class prototype (the mean embedding of its training samples); predict by cosine
similarity to the prototypes. No training, no memory of samples, so old classes never change.

What is taken: exactly that, on any backbone the pre-trained strategies load (the CLIP/ViT towers of
``adapters/nets/clip.py``, or the text models of ``adapters/lm/text_backbone.py``: ``model=minilm``,
``smollm2-135m``). Choices: the prototype is the normalised mean of L2-normalised embeddings (as SimE's, so
``simplecil`` is SimE without its first-task adapters, the comparison that asks what the adapters add); the
nearest-prototype search is faiss's inner product on normalised vectors (shared with SimE).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong.adapters.nets.clip import count_parameters
from lifelong.incremental.learner import RunContext
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._pretrained import PretrainedConfig, PretrainedLearner, PrototypeIndex, class_means


@dataclass
class SimpleCILConfig(PretrainedConfig):
    """SimpleCIL trains nothing: only the backbone (``model``, ``pretrained``) and batch sizes matter."""

    epochs: int = 1


class PrototypeModel(nn.Module):
    """The frozen backbone and one prototype per class (rows of unseen classes are zero)."""

    def __init__(self, backbone: nn.Module, n_classes: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("prototypes", torch.zeros(n_classes, dim))


@register(
    "strategy",
    "simplecil",
    config=SimpleCILConfig,
    summary="SimpleCIL: frozen pre-trained encoder, class-mean prototypes, cosine nearest prototype (no training)",
    capabilities=Capabilities(),
)
class SimpleCIL(PretrainedLearner):
    """Every task adds the prototypes of its classes; prediction is the nearest prototype by cosine."""

    config: SimpleCILConfig

    def __init__(self, config: SimpleCILConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.model = PrototypeModel(self.backbone, self.n_classes, self.backbone.out_dim).to(self.device)
        self.index = PrototypeIndex(self.backbone.out_dim)

    def train_experience(self, experience: Any) -> None:
        start = time.perf_counter()
        classes = self.experience_classes(experience)
        self.backbone.eval()
        with torch.no_grad(), self.autocast():
            feats = ((self.backbone(self.fit(x)), y) for x, y in self.batches(experience, shuffle=False))
            protos = class_means(feats, classes, self.backbone.out_dim)
        idx = torch.tensor(classes, device=self.device)
        self.model.prototypes[idx] = protos.to(self.device, torch.float32)
        self.seen[idx.cpu()] = True
        self._rebuild_index()
        self.train_seconds.append(time.perf_counter() - start)

    def _rebuild_index(self) -> None:
        ids = torch.nonzero(self.seen).flatten()
        self.index.build(self.model.prototypes[ids.to(self.device)].detach().cpu(), ids)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 cosine logits to the prototypes of the classes seen so far (``NEG`` for the others)."""
        self.backbone.eval()
        with torch.no_grad():
            with self.autocast():
                f = self.backbone(self.fit(x.to(self.device))).float()
            return self.index.scores(f, self.n_classes).to(x.device)

    def extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen.clone(), "train_seconds": list(self.train_seconds)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "seen" in state:
            self.seen = state["seen"].clone().bool().cpu()
        self.train_seconds = [float(s) for s in state.get("train_seconds", [])]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._rebuild_index()

    def summary(self) -> dict[str, Any]:
        return {
            "backbone": self.loaded.name,
            "weights": self.loaded.weights,
            "trainable_parameters": 0,
            "backbone_parameters": count_parameters(self.backbone),
            "train_seconds_per_task": [round(s, 3) for s in self.train_seconds],
        }
