"""``continual-clip``: zero-shot CLIP over the class names seen so far (no training at all).

Follows Thengane et al., "CLIP model is an efficient continual learner" (2022): a frozen CLIP model classifies
an image by the cosine similarity of its embedding to the text embeddings of "a bad photo of a {class}." for
every class seen so far; each task only adds its class names to the text classifier. Nothing is trained, so
nothing is forgotten; the accuracy is entirely the pre-trained model's. With the default tiny random-weight
model this is chance level by construction: it shows the mechanics, not the method (give ``model=ViT-B-16``
and ``pretrained=laion2b_s34b_b88k`` or a local weights file for real numbers).

On a text stream (``split-wordnet-glosses``) with a text model (``model=minilm``, the default there, or
``smollm2-135m``) this is the text analogue: a gloss is scored against the pooled embedding of
"a kind of {class}." from the same frozen encoder.

Departure: the prompt templates are configurable (``templates``, averaged as in CLIP's prompt ensembling);
the default is the single template Continual-CLIP uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.incremental.learner import RunContext
from lifelong.platform.errors import UserError
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._pretrained import NEG, PretrainedConfig, PretrainedLearner


@dataclass
class ContinualClipConfig(PretrainedConfig):
    """Zero-shot settings: the prompt templates and CLIP's logit scale."""

    templates: list[str] = field(default_factory=lambda: ["a bad photo of a {}."])
    logit_scale: float = 100.0

    def validate(self) -> None:
        super().validate()
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("templates: every template needs a '{}' for the class name")


class TextClassifier(nn.Module):
    """The frozen backbone plus the text embeddings of the classes seen so far (rows of unseen classes are 0)."""

    def __init__(self, backbone: nn.Module, n_classes: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("text", torch.zeros(n_classes, dim))


@register(
    "strategy",
    "continual-clip",
    config=ContinualClipConfig,
    summary="Continual-CLIP: zero-shot CLIP with class-name prompts, growing with each task (no training)",
    capabilities=Capabilities(),
)
class ContinualClip(PretrainedLearner):
    """Adds each task's class-name text embeddings; predicts by image-text cosine similarity."""

    config: ContinualClipConfig

    def __init__(self, config: ContinualClipConfig, context: RunContext) -> None:
        super().__init__(config, context)
        if self.loaded.text is None:
            raise UserError(f"continual-clip needs a CLIP model with a text tower; {self.loaded.name} has none")
        self.names = self.class_names()
        self.model = TextClassifier(self.backbone, self.n_classes, self.backbone.out_dim).to(self.device)

    def train_experience(self, experience: Any) -> None:
        assert self.loaded.text is not None
        classes = self.experience_classes(experience)
        names = [self.names[c] for c in classes]
        with self.autocast():  # the text tower's forward; the stored embeddings are float32
            emb = self.loaded.text.class_embeddings(names, self.templates(self.config.templates), self.device)
        idx = torch.tensor(classes, device=self.device)
        self.model.text[idx] = emb.to(self.device, torch.float32)
        self.seen[idx.cpu()] = True

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits: the image encoder runs under the configured precision, the similarities in float32."""
        self.backbone.eval()
        with torch.no_grad():
            with self.autocast():
                feats = self.backbone(self.fit(x.to(self.device)))
            f = F.normalize(feats.float(), dim=-1)
            logits = self.config.logit_scale * f @ self.model.text.T
            logits[:, ~self.seen.to(self.device)] = NEG
        return logits.to(x.device)

    def extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "seen" in state:
            self.seen = state["seen"].clone().bool().cpu()

    def summary(self) -> dict[str, Any]:
        return {"backbone": self.loaded.name, "weights": self.loaded.weights, "trainable_parameters": 0}
