"""``fsl-snn``: Self-cross Feature based Spiking Neural Networks for Efficient Few-shot Learning.

Paper: Xu, Zhu, Zhou, Chen, Liu, Shen and Zhang, ICML 2025 (PMLR 267:70007-70019). No code is public; only the
abstract and third-party summaries were available, so most details below are choices, each measured in
docs/few-shot.md (ablations, ANN twin, operations per episode).

Taken from the paper:
- a spiking backbone whose weights are shared by support and query samples (the platform's direct-encoded
  spiking ResNet, LIF neurons, T steps: ``adapters/nets/spiking.py``; the paper's VGGSNN is too big for CPUs);
- a self-feature module: attention over the sample's own spatio-temporal features;
- a cross-feature contrastive module: the query attends to the support, and the class-conditioned query is
  scored against the support prototypes;
- the loss: TET (the cross-entropy of every time step's episode logits, averaged over steps;
  ``incremental/learner.tet_loss``) plus InfoNCE.

Choices where the paper (as far as it can be read) is silent:
- self-feature module: single-head attention over all T*H*W tokens of the last stage's spike map (every
  position at every time step attends to every other; no positional code), residual with a learned gate that
  starts at 0, so training starts from the plain backbone; queries/keys are projected to ``attention_dim``;
- cross-feature module: for each class c, every spatial token of the query (at each step t) attends to the
  tokens of class c's support samples at step t (CAN-style cross attention, Hou et al. 2019); the attended
  values are added to the query tokens through a gate that starts at 0 and pooled, giving one
  class-conditioned query embedding per class and step;
- scores: the cosine between the class-conditioned query and the class prototype (the mean pooled support
  embedding of the class at that step), times a learned scale (initially 10), per time step: the TET logits;
  prediction averages them over T. The same metric in every ablation, so that the spiking prototypical
  network (both modules off, cross-entropy only) differs from FSL-SNN only by what is ablated;
- InfoNCE: the query's time-averaged self-feature embedding, through a linear projection head, against its
  class prototype (projected the same way) as the positive and the other classes' prototypes as negatives,
  cosine similarity over a fixed temperature (0.1), weight 1. Unlike the logits it sees neither the cross
  module nor single time steps: it shapes the embedding space the prototypes live in;
- "no TET" is the cross-entropy of the time-averaged logits; the ANN twin is the same network with ReLUs in
  the place of the LIF neurons and one time step (``spiking=false``).

As a class-incremental strategy (few-shot class-incremental streams: ``--set shots=K`` on ``split-*``,
docs/few-shot.md): the first experience (the base stage) is meta-trained on episodes of its classes
(``epochs * episodes_per_epoch`` episodes of ``n_way`` ways, ``k_shot`` shots, ``n_query`` queries); the network
is frozen afterwards, as prototype-based FSCIL methods do (the few shots of a later stage would only overfit
it); every class keeps ``support_per_class`` seeded training samples as its support set, and ``predict``
scores a sample as a query against the support of every class seen so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.nets.spiking import SpikingResNet, count_ops
from lifelong.incremental.episodes import Episode, EpisodeSampler
from lifelong.incremental.fewshot import EpisodicLearner
from lifelong.incremental.learner import Learner, RunContext, StrategyConfig, make_optimizer, tet_loss
from lifelong.platform.config import ConfigError
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._samples import materialise

#: backbone names and their spiking ResNet layout and width multiplier
BACKBONES: dict[str, tuple[str, float]] = {
    "spiking-tiny": ("tiny", 1.0), "spiking-mnist": ("mnist", 1.0), "spiking-mnist-half": ("mnist", 0.5),
    "spiking-cifar": ("cifar", 1.0),
}
UNSEEN_LOGIT = -1e4  # the logit of a class whose support is not known yet


@dataclass
class FSLSNNConfig(StrategyConfig):
    """Settings of ``fsl-snn``; each module and each loss term is one switch, so an ablation is one ``--set``."""

    model: str = "auto"  # auto: spiking-tiny up to 8x8 inputs, spiking-mnist up to 32x32, spiking-cifar above
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 0.001
    epochs: int = 4
    T: int = 4
    spiking: bool = True  # false: the ANN twin (ReLU in the place of LIF, one time step)
    self_module: bool = True
    cross_module: bool = True
    attention_dim: int = 32
    infonce_weight: float = 1.0  # 0: no InfoNCE
    temperature: float = 0.1
    loss: Literal["tet", "ce"] = "tet"  # ce: cross-entropy of the time-averaged logits (no TET)
    # as a strategy on class-incremental streams
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    episodes_per_epoch: int = 25
    support_per_class: int = 5

    def validate(self) -> None:
        super().validate()
        if self.model != "auto" and self.model not in BACKBONES:
            raise ValueError(f"model: {self.model!r} is not allowed; allowed values: auto, {', '.join(BACKBONES)}")
        if self.loss not in ("tet", "ce"):
            raise ValueError(f"loss: {self.loss!r} is not allowed; allowed values: 'tet', 'ce'")
        for name in ("T", "attention_dim", "n_way", "k_shot", "n_query", "episodes_per_epoch", "support_per_class"):
            if getattr(self, name) < (2 if name == "n_way" else 1):
                raise ValueError(f"{name} must be at least {2 if name == 'n_way' else 1}, got {getattr(self, name)}")
        if self.infonce_weight < 0:
            raise ValueError(f"infonce_weight must be 0 (off) or positive, got {self.infonce_weight}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


def info_nce(queries: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """InfoNCE of each query ``[Q, D]`` against the prototypes ``[N, D]``: its own class's prototype is the
    positive, the others the negatives; cosine similarity over ``temperature``, mean over the queries."""
    sims = F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).t() / temperature
    return F.cross_entropy(sims, targets)


class GatedAttention(nn.Module):
    """The layers both modules share: query and key projections to ``dim``, a value projection, and a gate that
    starts at 0 (each module begins as the identity and learns how much attention to add)."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(channels, dim, bias=False)
        self.key = nn.Linear(channels, dim, bias=False)
        self.value = nn.Linear(channels, channels, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))
        self.dim = dim
        self.counted_macs = 0.0  # the attention's own products, added up while ``counting`` is set
        self.counting = False


class SelfFeature(GatedAttention):
    """Attention over a sample's own spatio-temporal tokens: ``[T, B, C, H, W]`` -> tokens ``[T, B, H*W, C]``."""

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = fmap.shape
        tokens = fmap.flatten(3).permute(1, 0, 3, 2).reshape(B, T * H * W, C)
        scores = self.query(tokens) @ self.key(tokens).transpose(1, 2) / math.sqrt(self.dim)
        out = tokens + self.gate * (scores.softmax(-1) @ self.value(tokens))
        if self.counting:
            n = T * H * W
            self.counted_macs += float(B * n * n * (self.dim + C))
        return out.reshape(B, T, H * W, C).transpose(0, 1)


class CrossFeature(GatedAttention):
    """The query's tokens attend to each class's support tokens: ``[T, Q, L, C]`` and ``[T, N, M, C]`` (with a
    ``[N, M]`` mask of real support tokens) -> one class-conditioned query embedding per class ``[T, Q, N, C]``."""

    def forward(self, query: torch.Tensor, support: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T, Q, L, C = query.shape
        N, M = support.shape[1:3]
        scores = torch.einsum("tqld,tnmd->tqnlm", self.query(query), self.key(support)) / math.sqrt(self.dim)
        scores = scores.masked_fill(~mask[None, None, :, None, :], float("-inf"))
        attended = torch.einsum("tqnlm,tnmc->tqnlc", scores.softmax(-1), self.value(support))
        if self.counting:
            self.counted_macs += float(T * Q * N * L * M * (self.dim + C))
        return (query.unsqueeze(2) + self.gate * attended).mean(3)


class FSLSNNNet(nn.Module):
    """The shared spiking backbone, the two modules and the InfoNCE projection head."""

    def __init__(self, in_channels: int, layout: str, width_mult: float, config: FSLSNNConfig) -> None:
        super().__init__()
        self.backbone = SpikingResNet(in_channels, layout=layout, width_mult=width_mult, T=config.T,
                                      spiking=config.spiking)
        c = self.backbone.feature_dim
        self.self_feature = SelfFeature(c, config.attention_dim) if config.self_module else None
        self.cross_feature = CrossFeature(c, config.attention_dim) if config.cross_module else None
        self.projection = nn.Linear(c, config.attention_dim)
        self.scale = nn.Parameter(torch.tensor(10.0))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Spatio-temporal tokens ``[T, B, H*W, C]`` (after the self-feature module when it is on)."""
        fmap = self.backbone.feature_map(x)
        if self.self_feature is not None:
            return self.self_feature(fmap)
        return fmap.flatten(3).transpose(2, 3)

    def forward_episode(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                        n_way: int) -> dict[str, torch.Tensor]:
        """Per-step logits ``[T, Q, N]``, the pooled query embeddings ``[T, Q, C]`` and prototypes ``[T, N, C]``."""
        tok = self.tokens(torch.cat([support_x, query_x]))
        s_tok, q_tok = tok[:, : len(support_x)], tok[:, len(support_x):]
        members = [torch.nonzero(support_y == c).flatten() for c in range(n_way)]
        if any(len(m) == 0 for m in members):
            raise ValueError("every class of the episode needs at least one support sample")
        s_emb = s_tok.mean(2)
        prototypes = torch.stack([s_emb[:, m].mean(1) for m in members], 1)  # [T, N, C]
        q_emb = q_tok.mean(2)
        if self.cross_feature is not None:
            T, _, L, C = s_tok.shape
            most = max(len(m) for m in members)
            support = s_tok.new_zeros(T, n_way, most * L, C)
            mask = torch.zeros(n_way, most * L, dtype=torch.bool, device=s_tok.device)
            for c, m in enumerate(members):
                support[:, c, : len(m) * L] = s_tok[:, m].reshape(T, len(m) * L, C)
                mask[c, : len(m) * L] = True
            conditioned = self.cross_feature(q_tok, support, mask)  # [T, Q, N, C]
        else:
            conditioned = q_emb.unsqueeze(2)
        logits = self.scale * F.cosine_similarity(conditioned, prototypes.unsqueeze(1), dim=-1)
        return {"step_logits": logits, "query_emb": q_emb, "prototypes": prototypes}


def resolve_backbone(name: str, input_shape: tuple[int, ...]) -> tuple[str, float]:
    """The layout and width of the backbone ``name`` (``auto``: by the input's size)."""
    if len(input_shape) != 3:
        raise ConfigError(f"fsl-snn needs image-like inputs (C, H, W); the benchmark's are {input_shape}")
    if name == "auto":
        side = max(input_shape[1:])
        name = "spiking-tiny" if side <= 8 else "spiking-mnist" if side <= 32 else "spiking-cifar"
    return BACKBONES[name]


@register("strategy", "fsl-snn", config=FSLSNNConfig,
          summary="FSL-SNN: spiking few-shot learner, self/cross feature modules, TET + InfoNCE (episodes, FSCIL)",
          capabilities=Capabilities(uses_replay_memory=True))
class FSLSNN(Learner, EpisodicLearner):
    """Meta-trains on episodes; as a strategy, meta-trains on the base stage and then keeps class supports."""

    config: FSLSNNConfig

    def __init__(self, config: FSLSNNConfig, context: RunContext) -> None:
        super().__init__(config, context)
        shape = tuple(context.stream.input_shape)
        layout, width = resolve_backbone(config.model, shape)
        self.model = FSLSNNNet(shape[0], layout, width, config).to(context.device)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.support_x = torch.empty(0, *shape)
        self.support_y = torch.empty(0, dtype=torch.long)
        self.trained = False

    # ------------------------------------------------------------------------------------------ episodes
    def loss(self, out: dict[str, torch.Tensor], query_y: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """TET (or CE of the time-averaged logits) plus the weighted InfoNCE."""
        logits = out["step_logits"]
        total = tet_loss(logits, query_y) if self.config.loss == "tet" else F.cross_entropy(logits.mean(0), query_y)
        if self.config.infonce_weight > 0:
            z_q = self.model.projection(out["query_emb"].mean(0))
            z_p = self.model.projection(out["prototypes"].mean(0))
            total = total + self.config.infonce_weight * info_nce(z_q, z_p, query_y, self.config.temperature)
        return total

    def train_episode(self, episode: Episode) -> float:
        device = self.context.device
        self.model.train()
        out = self.model.forward_episode(episode.support_x.to(device), episode.support_y.to(device),
                                         episode.query_x.to(device), episode.n_way)
        loss = self.loss(out, episode.query_y.to(device), episode.support_y.to(device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def episode_logits(self, episode: Episode) -> torch.Tensor:
        device = self.context.device
        self.model.eval()
        out = self.model.forward_episode(episode.support_x.to(device), episode.support_y.to(device),
                                         episode.query_x.to(device), episode.n_way)
        return out["step_logits"].mean(0).float()

    def episode_cost(self, episode: Episode) -> dict[str, float]:
        """Spike-driven accumulates and MACs of scoring one whole episode (support and queries): the
        convolutions and linear layers by their inputs (``count_ops``), the attention products as MACs."""
        modules = [m for m in (self.model.self_feature, self.model.cross_feature) if m is not None]
        for m in modules:
            m.counting, m.counted_macs = True, 0.0
        try:
            count = count_ops(self.model, lambda: self.episode_logits(episode), batch_size=1)
        finally:
            for m in modules:
                m.counting = False
        attention = sum(m.counted_macs for m in modules)
        macs = count.macs + attention
        return {"sops": count.sops, "macs": macs, "attention_macs": attention, "dense_macs": count.dense_macs + attention,
                "energy_uj": (macs * 4.6 + count.sops * 0.9) * 1e-6}

    # ------------------------------------------------------------------------------ class-incremental use
    def train_experience(self, experience: Any) -> None:
        x, y = materialise(experience.dataset)
        if not self.trained:
            self._meta_train(x, y)
            self.trained = True
        self._remember(x, y)

    def _meta_train(self, x: torch.Tensor, y: torch.Tensor) -> None:
        classes = sorted(set(y.tolist()))
        fewest = min(int((y == c).sum()) for c in classes)
        n_way, n_query = min(self.config.n_way, len(classes)), min(self.config.n_query, fewest - self.config.k_shot)
        if n_way < 2 or n_query < 1:
            return  # one class, or too few samples for an episode: the backbone stays as initialised
        sampler = EpisodeSampler(x, y, classes, n_way=n_way, k_shot=self.config.k_shot, n_query=n_query,
                                 seed=self.context.seed, split="train")
        for i in range(self.config.epochs * self.config.episodes_per_epoch):
            self.train_episode(sampler.episode(i))

    def _remember(self, x: torch.Tensor, y: torch.Tensor) -> None:
        keep = []
        for c in sorted(set(y.tolist())):
            idx = np.flatnonzero(y.numpy() == c)
            rng = np.random.default_rng([self.context.seed, int(c)])
            keep.append(rng.permutation(idx)[: self.config.support_per_class])
        idx = torch.as_tensor(np.concatenate(keep), dtype=torch.long)
        self.support_x = torch.cat([self.support_x, x[idx]])
        self.support_y = torch.cat([self.support_y, y[idx]])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        n_classes = self.context.stream.n_classes
        logits = torch.full((len(x), n_classes), UNSEEN_LOGIT, device=x.device)
        if not len(self.support_y):
            return logits
        seen = sorted(set(self.support_y.tolist()))
        local = torch.tensor([seen.index(int(c)) for c in self.support_y], device=x.device)
        self.model.eval()
        out = self.model.forward_episode(self.support_x.to(x.device), local, x, len(seen))
        logits[:, torch.tensor(seen, device=x.device)] = out["step_logits"].mean(0).float()
        return logits

    def extra_state(self) -> dict[str, Any]:
        return {"support_x": self.support_x, "support_y": self.support_y, "trained": self.trained}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "support_x" in state:
            self.support_x, self.support_y = state["support_x"], state["support_y"]
            self.trained = bool(state.get("trained", False))

    def summary(self) -> dict[str, Any]:
        return {"parameters": sum(p.numel() for p in self.model.parameters()),
                "support_samples": len(self.support_y), "T": self.model.backbone.T,
                "self_gate": float(self.model.self_feature.gate.detach()) if self.model.self_feature is not None else None,
                "cross_gate": float(self.model.cross_feature.gate.detach()) if self.model.cross_feature is not None else None}
