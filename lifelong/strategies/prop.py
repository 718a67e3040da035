"""``prop``: ProP — task-specific prompt-prototypes, without key-value prompt selection.

Follows Luo, Ran, Li et al., "ProP: a key-value-pair-free continual learner with task-specific
prompt-prototypes" (arXiv 2601.04864, Neural Networks). Only the abstract could be read and no official code
exists, so this is a RECONSTRUCTION from the abstract, closest in spirit to CPP (Li et al., WACV 2024); usage,
settings and measurements are in docs/pretrained.md:

1. A frozen ViT (open_clip visual tower by default, or a timm ViT). For task t a prompt P_t (``prompt_length``
   tokens, inserted after the class token at the input: shallow prompt tuning) is learned on task t's data
   only, with cross-entropy of a cosine classifier (scale 16) over task t's classes whose weights start from
   the prototypes under the initial prompt. The classifier is dropped afterwards; earlier prompts are frozen.
2. The regulariser on prompt values, added to the loss: ``bound`` (default) λ·Σ max(|P|−b, 0)², which only
   penalises excessively large values, or ``l2`` λ·Σ P² (``adapters/nets/prompts.prompt_regulariser``).
   ``prompt_init`` chooses the start: U(-s, s) as L2 does (default), N(0, s²), or a warm start from P_{t-1}.
3. After training task t: per-class prototypes μ_c = normalised mean of f(x; P_t) for t's classes; each
   prototype stays bound to its task's prompt.
4. Inference: f(x; P_t) for every task t in ONE batched forward (``forward_all_prompts``: the T prompted
   sequences are stacked along the batch), score class c of task t by cos(f(x; P_t), μ_c) and predict the best
   class over all tasks. No keys, no query matching, no task identity at test time. ``max_batched_sequences``
   (256) splits the IMAGES of a large batch so one forward holds at most that many prompted sequences, every
   forward still carrying all T prompts (measured fastest on CPU; raise it on a GPU). ``score_norm=softmax``
   instead turns each task's scores into probabilities (temperature ``logit_scale``) before comparing tasks.

On a text model (``model=minilm``, ``smollm2-135m``; ``adapters/lm/text_backbone.py``) a prompt is P token
embeddings inserted after [CLS] (BERT) or before the text (a decoder), all tasks' prompts again run in one
batched forward; the features are the mean of the text tokens' final states. Prompt values are drawn, and
the ``bound`` regulariser's b applied, in units of the spread of the model's own token embeddings (about 0.05
for MiniLM, where a U(-1, 1) prompt would be twenty times larger than any word).

Gaps filled: prefix prompts in deeper layers are not implemented (input prompts only); the loss is a cosine
classifier's cross-entropy rather than CPP's contrastive prototype loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.lm.text_backbone import TextBackbone
from lifelong.adapters.nets.clip import count_parameters
from lifelong.adapters.nets.prompts import PromptBank, forward_all_prompts, forward_each_prompt, prompt_regulariser
from lifelong.incremental.learner import RunContext
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._pretrained import (
    NEG,
    CosineHead,
    PretrainedConfig,
    PretrainedLearner,
    class_means,
    local_labels,
)


@dataclass
class ProPConfig(PretrainedConfig):
    """ProP's settings; see the module docstring for the reconstruction they parametrise."""

    epochs: int = 3
    lr: float = 1e-2
    prompt_length: int = 4
    prompt_init: Literal["uniform", "normal", "previous"] = "uniform"
    prompt_init_scale: float = 1.0
    reg: Literal["bound", "l2", "none"] = "bound"
    reg_lambda: float = 1e-2
    reg_bound: float = 1.0
    logit_scale: float = 16.0
    score_norm: Literal["none", "softmax"] = "none"
    max_batched_sequences: int = 256  # per forward (all tasks, a slice of the images); 0: no cap

    def validate(self) -> None:
        super().validate()
        if self.prompt_length < 1:
            raise ValueError(f"prompt_length must be at least 1, got {self.prompt_length}")
        if self.reg_lambda < 0 or self.reg_bound < 0:
            raise ValueError("reg_lambda and reg_bound must not be negative")
        if self.max_batched_sequences < 0:
            raise ValueError(f"max_batched_sequences must be 0 or more, got {self.max_batched_sequences}")


class ProPModel(nn.Module):
    """The frozen backbone, the task prompts and the prompt-bound prototypes (the checkpointed state)."""

    def __init__(self, backbone: nn.Module, prompts: nn.Module, n_classes: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompts = prompts
        self.register_buffer("prototypes", torch.zeros(n_classes, dim))
        self.register_buffer("task_of_class", torch.full((n_classes,), -1, dtype=torch.long))


@register(
    "strategy",
    "prop",
    config=ProPConfig,
    summary="ProP: one prompt per task + prompt-bound class prototypes, no key-value matching (reconstruction)",
    capabilities=Capabilities(),
)
class ProP(PretrainedLearner):
    """One prompt per task, prototypes bound to it, all prompts evaluated in one batched forward."""

    config: ProPConfig

    def __init__(self, config: ProPConfig, context: RunContext) -> None:
        super().__init__(config, context)

        bank = PromptBank(config.prompt_length, self.backbone.width)
        self.model = ProPModel(self.backbone, bank, self.n_classes, self.backbone.out_dim).to(self.device)

    @property
    def bank(self) -> Any:
        return self.model.prompts

    @property
    def prompt_gain(self) -> float:
        """The scale of prompt values: 1 on a ViT, the spread of the token embeddings on a text model."""
        return float(getattr(self.backbone, "prompt_init_gain", 1.0))

    def _features(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.fit(x), prompt)

    def _prototypes_of(self, experience: Any, classes: list[int], prompt: torch.Tensor) -> torch.Tensor:
        """Float32 class means under ``prompt``, the forward passes under the configured precision."""
        with torch.no_grad(), self.autocast():
            feats = ((self._features(x, prompt), y) for x, y in self.batches(experience, shuffle=False))
            return class_means(feats, classes, self.backbone.out_dim)

    def train_experience(self, experience: Any) -> None:

        start = time.perf_counter()
        c = self.config
        classes = self.experience_classes(experience)
        for p in self.bank.prompts:
            p.requires_grad_(False)
        # seeded by (run seed, task index): a resumed run draws the same prompt as an uninterrupted one; a CPU
        # generator, so the prompt is also the same on every device
        generator = torch.Generator(device="cpu").manual_seed(self.context.seed * 1000 + 7 + len(self.bank))
        gain = self.prompt_gain
        prompt = self.bank.add_task(c.prompt_init, c.prompt_init_scale * gain, generator, device=self.device)
        head = CosineHead(self._prototypes_of(experience, classes, prompt), c.logit_scale).to(self.device)
        prompt.requires_grad_(True)

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(head(self._features(x, prompt)), local_labels(y, classes))
            return ce + prompt_regulariser(prompt, c.reg, c.reg_lambda, c.reg_bound * gain)

        self.fit_loop(experience, [prompt] + list(head.parameters()), loss_fn)
        prompt.requires_grad_(False)
        task = len(self.bank) - 1
        idx = torch.tensor(classes, device=self.device)
        self.model.prototypes[idx] = self._prototypes_of(experience, classes, prompt).to(self.device, torch.float32)
        self.model.task_of_class[idx] = task
        self.seen[idx.cpu()] = True
        self.train_seconds.append(time.perf_counter() - start)

    def scores(self, x: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """Float32 logits over all classes: cos(f(x; P_task(c)), μ_c) for seen classes, ``NEG`` for the others.

        Only the backbone runs under the configured precision; similarities are float32.
        """

        x = x.to(self.device)
        out = torch.full((x.shape[0], self.n_classes), NEG, device=self.device)
        if len(self.bank) == 0:
            return out
        prompts = self.bank.stacked()
        with self.autocast():
            xf = self.fit(x)
            if batched and isinstance(self.backbone, TextBackbone):
                feats = self.backbone.forward_all_prompts(xf, prompts, self.config.max_batched_sequences)
            elif batched:
                feats = forward_all_prompts(self.backbone, xf, prompts, self.config.max_batched_sequences)
            else:
                feats = forward_each_prompt(self.backbone, xf, prompts)
        feats = F.normalize(feats.float(), dim=-1)  # (T, B, F)
        seen = torch.nonzero(self.model.task_of_class >= 0).flatten()
        tasks = self.model.task_of_class[seen]
        sims = torch.einsum("cbf,cf->bc", feats[tasks], self.model.prototypes[seen])
        if self.config.score_norm == "softmax":
            scaled = sims * self.config.logit_scale
            for t in tasks.unique().tolist():
                cols = tasks == t
                scaled[:, cols] = torch.softmax(scaled[:, cols], dim=1)
            sims = scaled
        out[:, seen] = sims
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.backbone.eval()
        with torch.no_grad():
            return self.scores(x).to(x.device)

    def extra_state(self) -> dict[str, Any]:
        return {"n_tasks": len(self.bank), "seen": self.seen.clone(), "train_seconds": list(self.train_seconds)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.bank.resize(int(state.get("n_tasks", 0)), device=self.device)
        for p in self.bank.prompts:
            p.requires_grad_(False)
        if "seen" in state:
            self.seen = state["seen"].clone().bool().cpu()
        self.train_seconds = [float(s) for s in state.get("train_seconds", [])]

    def summary(self) -> dict[str, Any]:

        per_task = self.bank.length * self.bank.width
        return {
            "backbone": self.loaded.name,
            "weights": self.loaded.weights,
            "trainable_parameters_per_task": per_task,
            "prompt_parameters": per_task * len(self.bank),
            "backbone_parameters": count_parameters(self.backbone),
            "train_seconds_per_task": [round(s, 3) for s in self.train_seconds],
        }
