"""``sime``: SimE — a frozen CLIP image encoder with nonlinear multi-adapters and class prototypes.

Follows Luo, Ran, Shen et al., "SimE: simple, efficient incremental learning with a vision-language model and
nonlinear multi-adapters" (arXiv 2603.11211; ICLR 2025 submission). No official code exists (usage, settings
and measurements: docs/pretrained.md). What is taken from the paper and its reviews:

- a frozen CLIP image encoder (open_clip; a timm ViT also works) with AdaptFormer-style parallel bottleneck
  adapters (down, ReLU, zero-initialised up, scale) beside the MLP ("AdaptMLP", site ``mlp``) and/or the
  attention ("AdaptAtten", site ``attn``) of chosen blocks;
- the adapters train on the first task only, then stay frozen; every task adds class prototypes (mean adapted
  embeddings); prediction is the nearest prototype by cosine similarity (searched with faiss); no replay
  memory and no growth after the first task;
- the blocks (``adapter_blocks``) and in-block sites (``adapter_sites``) are config, so the "more adapters
  between blocks helps, more within a block does not" finding can be re-run as an ablation.

Choices where the paper is silent (all configurable):

- bottleneck width 64, in every block, MLP site only, scale 0.1 (AdaptFormer's). On ViT-B/16 this is
  12 x (768·64·2 + 64 + 768) = 1.19 M trainable parameters, the figure the reviews quote.
- loss on the first task: cross-entropy of a cosine classifier (scale 16) over that task's classes, its
  weights started from the frozen encoder's prototypes; the head is dropped after training (prototypes
  replace it). Optimiser Adam, lr 1e-3.
- ``train_tasks`` (default 1) lets the adapters train on the first N tasks; prototypes of earlier tasks are not
  recomputed afterwards (there is no memory to recompute them from).
- optional fusion with CLIP's zero-shot text score (``text_weight`` w > 0): score = (1-w)·cos(f, μ_c) +
  w·cos(f, t_c) with t_c the text embedding of "a bad photo of a {class}." (Continual-CLIP's prompt).

On a text model (``model=minilm``, ``smollm2-135m``; ``adapters/lm/text_backbone.py``) the same adapters sit
beside the transformer blocks' MLP or attention, and the "text tower" is the encoder itself: t_c is the pooled
embedding of "a kind of {class}." through the adapted encoder (recomputed after the adapters train), so the
fused scores compare vectors of one space.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.nets.clip import count_parameters, resolve_blocks
from lifelong.incremental.learner import RunContext
from lifelong.platform.errors import UserError
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._pretrained import (
    CosineHead,
    PretrainedConfig,
    PretrainedLearner,
    PrototypeIndex,
    attach_backbone_adapters,
    class_means,
    local_labels,
)


@dataclass
class SimEConfig(PretrainedConfig):
    """SimE's settings; see the module docstring for where each default comes from."""

    epochs: int = 5
    adapter_blocks: list[int] = field(default_factory=list)  # empty: every block
    adapter_sites: list[str] = field(default_factory=lambda: ["mlp"])
    adapter_dim: int = 64
    adapter_scale: float = 0.1
    train_tasks: int = 1
    logit_scale: float = 16.0
    text_weight: float = 0.0
    templates: list[str] = field(default_factory=lambda: ["a bad photo of a {}."])

    def validate(self) -> None:
        super().validate()
        for site in self.adapter_sites:
            if site not in ("mlp", "attn"):
                raise ValueError(f"adapter_sites: {site!r} is not allowed; allowed values: 'mlp', 'attn'")
        if not self.adapter_sites:
            raise ValueError("adapter_sites: give at least one of 'mlp', 'attn'")
        if self.adapter_dim < 1:
            raise ValueError(f"adapter_dim must be at least 1, got {self.adapter_dim}")
        if self.train_tasks < 0:
            raise ValueError(f"train_tasks must be 0 or more, got {self.train_tasks}")
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"text_weight must be between 0 and 1, got {self.text_weight}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("templates: every template needs a '{}' for the class name")


class SimEModel(nn.Module):
    """The frozen backbone with its adapters and the class prototypes (the state the runner checkpoints)."""

    def __init__(self, backbone: nn.Module, adapters: nn.Module, n_classes: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapters = adapters
        self.register_buffer("prototypes", torch.zeros(n_classes, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


@register(
    "strategy",
    "sime",
    config=SimEConfig,
    summary="SimE: frozen CLIP encoder + parallel adapters (first task), nearest class prototype, no memory",
    capabilities=Capabilities(),
)
class SimE(PretrainedLearner):
    """Adapters learn on the first task(s); every task then only adds prototypes."""

    config: SimEConfig

    def __init__(self, config: SimEConfig, context: RunContext) -> None:
        super().__init__(config, context)

        blocks = resolve_blocks(config.adapter_blocks, len(self.backbone.blocks))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed + 1)
            adapters = attach_backbone_adapters(
                self.backbone, blocks, config.adapter_sites, config.adapter_dim, config.adapter_scale
            ).to(self.device)
        self.model = SimEModel(self.backbone, adapters, self.n_classes, self.backbone.out_dim).to(self.device)
        self.index = PrototypeIndex(self.backbone.out_dim)
        self.tasks_done = 0
        self._text: torch.Tensor | None = None
        if config.text_weight > 0:
            if self.loaded.text is None:

                raise UserError(f"text_weight > 0 needs a CLIP model with a text tower; {self.loaded.name} has none")
            self.class_names()  # fail early when the stream has no names
        self._set_adapters_trainable(False)

    def _set_adapters_trainable(self, on: bool) -> None:
        for p in self.model.adapters.parameters():
            p.requires_grad_(on)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.fit(x))

    def _prototypes_of(self, experience: Any, classes: list[int]) -> torch.Tensor:
        """Float32 class means of the (adapted) features, the forward passes under the configured precision."""
        self.backbone.eval()
        with torch.no_grad(), self.autocast():
            feats = ((self.features(x), y) for x, y in self.batches(experience, shuffle=False))
            return class_means(feats, classes, self.backbone.out_dim)

    def train_experience(self, experience: Any) -> None:
        start = time.perf_counter()
        classes = self.experience_classes(experience)
        if self.tasks_done < self.config.train_tasks:
            head = CosineHead(self._prototypes_of(experience, classes), self.config.logit_scale).to(self.device)
            self._set_adapters_trainable(True)
            params = list(self.model.adapters.parameters()) + list(head.parameters())

            def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(head(self.features(x)), local_labels(y, classes))

            self.backbone.train()
            self.fit_loop(experience, params, loss_fn)
            self.backbone.eval()
            self._set_adapters_trainable(False)
            self._text = None  # class-name embeddings go through the adapted encoder on a text model
        protos = self._prototypes_of(experience, classes)
        idx = torch.tensor(classes, device=self.device)
        self.model.prototypes[idx] = protos.to(self.device, torch.float32)
        self.seen[idx.cpu()] = True
        self.tasks_done += 1
        self._rebuild_index()
        self.train_seconds.append(time.perf_counter() - start)

    def _rebuild_index(self) -> None:
        ids = torch.nonzero(self.seen).flatten()
        self.index.build(self.model.prototypes[ids.to(self.device)].detach().cpu(), ids)

    def _text_embeddings(self) -> torch.Tensor:
        """The classes' text embeddings on the device, float32 (the text tower runs under the precision)."""
        if self._text is None:
            assert self.loaded.text is not None
            with self.autocast():
                text = self.loaded.text.class_embeddings(self.class_names(), self.templates(self.config.templates),
                                                          self.device)
            self._text = text.float()
        return self._text

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits: nearest-prototype cosine (and the text score); only the encoder runs under autocast."""
        self.backbone.eval()
        with torch.no_grad():
            with self.autocast():
                f = self.features(x.to(self.device)).float()
            logits = self.index.scores(f, self.n_classes)
            w = self.config.text_weight
            if w > 0:
                text = F.normalize(f, dim=-1) @ self._text_embeddings().T
                seen = self.seen.to(self.device)
                logits[:, seen] = (1 - w) * logits[:, seen] + w * text[:, seen]
        return logits.to(x.device)

    def extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen.clone(), "tasks_done": self.tasks_done, "train_seconds": list(self.train_seconds)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "seen" in state:
            self.seen = state["seen"].clone().bool().cpu()
        self.tasks_done = int(state.get("tasks_done", 0))
        self.train_seconds = [float(s) for s in state.get("train_seconds", [])]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._rebuild_index()

    def summary(self) -> dict[str, Any]:

        return {
            "backbone": self.loaded.name,
            "weights": self.loaded.weights,
            "trainable_parameters": self.model.adapters.n_parameters(),
            "backbone_parameters": count_parameters(self.backbone),
            "adapters": len(self.model.adapters),
            "train_seconds_per_task": [round(s, 3) for s in self.train_seconds],
        }
