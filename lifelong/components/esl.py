"""``esl``: sparse training from scratch at a fixed density, after ESL-SNNs.

Follows ESL-SNNs (Shen, Xu, Liu, Wang, Pan, Tang, "ESL-SNNs: An Evolutionary Structure Learning Strategy for
Spiking Neural Networks", AAAI 2023): the network starts from an Erdős–Rényi random sparse topology, weights
train every step, and every ``T_iter`` steps the weakest connections are pruned and as many are regrown, so the
density never changes. The paper has no public code; what it leaves open is chosen here:

- what is sparse: the weight of every trainable ``Conv2d`` and ``Linear`` except the classifier heads (modules
  named ``classifier``/``aux_classifier``, which grow with the classes in class-incremental runs); biases and
  batch norm stay dense. ``density`` is over all masked weights together;
- Erdős–Rényi initial masks (``init=er``): each layer's density is proportional to
  ``sum(shape) / prod(shape)`` (the Erdős–Rényi-kernel rule of RigL, Evci et al. 2020), scaled to the target,
  layers that would exceed 1 kept dense; ``init=uniform`` gives every layer the same density. Each layer's
  active count is fixed at ``round(density_l * n_l)`` and the positions are drawn uniformly at random;
- the update, every ``T_iter`` optimizer steps: in each layer, ``prune_rate`` of the active weights with the
  smallest magnitude are pruned and as many are regrown among the weights that were inactive before the prune,
  at random (``grow=random``, as SET) or where the dense gradient of the last batch is largest
  (``grow=gradient``, as RigL); regrown weights start at zero and the optimizer's state (momentum, Adam moments)
  of every pruned or regrown weight is reset to zero. Gradients of inactive weights are zeroed before each step
  and the masks are re-applied after it;
- ``per_experience=true`` (parameter isolation for class-incremental runs, in the style of PackNet/WSN): each
  experience trains its own ``density`` of weights chosen among those no earlier experience owns; the weights
  of earlier experiences stay in the forward pass but are frozen (their values are restored after every step,
  so weight decay and momentum cannot move them); prediction uses the union of all masks (no task labels).
  The heads and batch-norm layers are shared and keep training, so this isolates features, not the classifier.

The random draws (initial masks, random regrowth) come from a generator seeded by the run's seed, the experience,
the update count and the layer's name, not from the global random state: every rank of a torchrun group draws
the same masks, and a resumed run draws what the uninterrupted one would have.

Masked dense kernels cost the same time as dense ones: the sparsity is measured in weights and multiply-
accumulates that a sparse kernel would skip, not in wall-clock time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lifelong.incremental.learner import Component, RunContext, TrainingState
from lifelong.platform.registry import register

HEAD_NAMES: tuple[str, ...] = ("classifier", "aux_classifier")


@dataclass
class ESLConfig:
    """Options of ``esl`` (``--set esl.density=0.1``)."""

    density: float = 0.1
    T_iter: int = 50  # optimizer steps between two prune-and-regrow updates
    prune_rate: float = 0.3  # fraction of each layer's active weights replaced at an update
    grow: Literal["random", "gradient"] = "gradient"
    init: Literal["er", "uniform"] = "er"
    per_experience: bool = False

    def validate(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.T_iter < 1:
            raise ValueError(f"T_iter must be at least 1, got {self.T_iter}")
        if not 0.0 <= self.prune_rate < 1.0:
            raise ValueError(f"prune_rate must be in [0, 1), got {self.prune_rate}")


def maskable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights ``esl`` masks: trainable Conv2d/Linear weights outside the classifier heads."""
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if any(part in HEAD_NAMES for part in name.split(".")):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad:
            out[f"{name}.weight" if name else "weight"] = module.weight
    return out


def layer_densities(shapes: dict[str, tuple[int, ...]], density: float, init: str = "er") -> dict[str, float]:
    """Per-layer densities whose weighted mean is ``density``: Erdős–Rényi-kernel (``er``) or uniform."""
    if init == "uniform" or density >= 1.0:
        return {name: density for name in shapes}
    sizes = {name: float(torch.Size(s).numel()) for name, s in shapes.items()}
    raw = {name: sum(s) / sizes[name] for name, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        eps = budget / divisor
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.update(over)


def _reset_optimizer_state(optimizer: torch.optim.Optimizer | None, param: nn.Parameter, where: torch.Tensor) -> None:
    """Zero the optimizer's per-weight state (momentum, Adam moments) of ``param`` where ``where`` is true."""
    if optimizer is None or param not in optimizer.state:
        return
    for value in optimizer.state[param].values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value[where] = 0


@register("component", "esl", config=ESLConfig,
          summary="ESL-SNNs: fixed-density sparse training, Erdos-Renyi masks, prune and regrow every T_iter steps")
class EvolutionarySparsity(Component):
    """Sparse masks that evolve during training (see the module docstring)."""

    config: ESLConfig

    def __init__(self, config: ESLConfig, context: RunContext) -> None:
        super().__init__(config, context)
        #: per masked weight: -1 inactive, else the experience that trains it (always 0 unless per_experience)
        self.owner: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.updates = 0
        self.experience = 0
        self._frozen: dict[str, torch.Tensor] = {}
        self._grads: dict[str, torch.Tensor] = {}

    # -- masks ---------------------------------------------------------------------------------------------
    def trainable(self, name: str) -> torch.Tensor:
        """Where weight ``name`` is trained in this experience."""
        owner = self.owner[name]
        return owner == self.experience if self.config.per_experience else owner >= 0

    def _draw(self, name: str, n: int, k: int, device: torch.device) -> torch.Tensor:
        """``k`` of ``range(n)`` in random order, the same on every rank and on resume (module docstring)."""
        seed = (int(self.context.seed) * 1_000_003 + self.experience * 10_007 + self.updates * 101
                + zlib.crc32(name.encode())) % (2**63)
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=generator)[:k].to(device)

    def active(self, name: str) -> torch.Tensor:
        """Where weight ``name`` takes part in the forward pass."""
        return self.owner[name] >= 0

    def density(self) -> float:
        """Active weights over masked weights."""
        total = sum(o.numel() for o in self.owner.values())
        return sum(int((o >= 0).sum()) for o in self.owner.values()) / max(1, total)

    def _new_masks(self, params: dict[str, nn.Parameter]) -> None:
        """Erdős–Rényi masks for the weights that have none yet (the owned ones of earlier experiences
        are left as they are; a new experience draws among the free weights)."""
        fresh = {n: p for n, p in params.items() if n not in self.owner}
        grow = {n: p for n, p in params.items() if n in self.owner and self.config.per_experience}
        todo = {**fresh, **grow}
        if not todo:
            return
        densities = layer_densities({n: tuple(p.shape) for n, p in todo.items()}, self.config.density, self.config.init)
        for name, p in todo.items():
            owner = self.owner.get(name)
            if owner is None:
                owner = torch.full(p.shape, -1, dtype=torch.int16, device=p.device)
            free = (owner < 0).flatten().nonzero().squeeze(1)
            k = min(len(free), max(1, round(densities[name] * p.numel())))
            pick = free[self._draw(name, len(free), k, free.device)]
            owner.view(-1)[pick] = self.experience
            self.owner[name] = owner

    @torch.no_grad()
    def _apply(self, params: dict[str, nn.Parameter]) -> None:
        for name, p in params.items():
            if name in self.owner:
                p.mul_(self.active(name).to(p.dtype))

    # -- hooks ---------------------------------------------------------------------------------------------
    def before_experience(self, state: TrainingState) -> None:
        self.experience = state.experience
        params = maskable(state.model)
        self._new_masks(params)
        self._apply(params)
        for name, p in params.items():
            _reset_optimizer_state(state.optimizer, p, ~self.trainable(name))
        self._frozen = {}
        if self.config.per_experience:
            self._frozen = {n: p.detach().clone() for n, p in params.items() if n in self.owner}

    def _update_due(self) -> bool:
        """Whether the coming optimizer step ends with a prune-and-regrow update (never at density 1)."""
        c = self.config
        return (self.steps + 1) % c.T_iter == 0 and c.prune_rate > 0 and c.density < 1.0

    @torch.no_grad()
    def after_backward(self, state: TrainingState) -> None:
        due = self._update_due()
        for name, p in maskable(state.model).items():
            if p.grad is None or name not in self.owner:
                continue
            if due and self.config.grow == "gradient":
                self._grads[name] = p.grad.detach().abs().clone()
            p.grad.mul_(self.trainable(name).to(p.grad.dtype))

    @torch.no_grad()
    def after_step(self, state: TrainingState) -> None:
        params = maskable(state.model)
        if self._update_due():
            for name, p in params.items():
                if name in self.owner:
                    self.prune_and_regrow(name, p, state.optimizer)
            self.updates += 1
        self._grads = {}
        self.steps += 1
        self._apply(params)
        for name, p in params.items():
            if name in self._frozen:
                keep = self.active(name) & ~self.trainable(name)
                p.copy_(torch.where(keep, self._frozen[name], p))

    def prune_scores(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """What pruning ranks active weights by (smallest pruned first): the magnitude."""
        return p.detach().abs().float()

    @torch.no_grad()
    def prune_and_regrow(self, name: str, p: nn.Parameter, optimizer: torch.optim.Optimizer | None) -> int:
        """Prune ``prune_rate`` of weight ``name``'s trainable active weights, regrow as many; returns the
        number replaced. Regrown weights are zero, and the optimizer state of both sets is zeroed."""
        owner = self.owner[name].view(-1)
        trainable = self.trainable(name).view(-1)
        n_active = int(trainable.sum())
        k = int(self.config.prune_rate * n_active)
        if k == 0:
            return 0
        candidates = (owner < 0).nonzero().squeeze(1)  # free before the prune: a pruned weight is not regrown now
        active_idx = trainable.nonzero().squeeze(1)
        scores = self.prune_scores(name, p).view(-1)[active_idx]
        pruned = active_idx[torch.topk(scores, k, largest=False).indices]
        owner[pruned] = -1
        if len(candidates) < k:  # nearly dense: the pruned weights are candidates too
            candidates = (owner < 0).nonzero().squeeze(1)
        grad = self._grads.get(name)
        if self.config.grow == "gradient" and grad is not None:
            grown = candidates[torch.topk(grad.view(-1)[candidates].float(), k).indices]
        else:
            grown = candidates[self._draw(name, len(candidates), k, candidates.device)]
        owner[grown] = self.experience if self.config.per_experience else 0
        changed = torch.zeros_like(trainable)
        changed[pruned] = True
        changed[grown] = True
        flat = p.view(-1)
        flat[pruned] = 0
        flat[grown] = 0
        _reset_optimizer_state(optimizer, p, changed.view(p.shape))
        return k

    def after_experience(self, state: TrainingState) -> None:
        self._frozen = {}
        self._grads = {}

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"owner": {n: o.cpu().clone() for n, o in self.owner.items()}, "steps": self.steps,
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        device = next(model.parameters()).device
        self.owner = {n: o.to(device) for n, o in (state.get("owner") or {}).items()}
        self.steps = int(state.get("steps", 0))
        self.updates = int(state.get("updates", 0))

    def summary(self) -> dict[str, Any]:
        per_layer = {n: float((o >= 0).float().mean()) for n, o in self.owner.items()}
        return {"density": self.density(), "target_density": self.config.density, "masked_layers": len(self.owner),
                "masked_weights": sum(o.numel() for o in self.owner.values()), "updates": self.updates,
                "steps": self.steps, "layer_density": per_layer}
