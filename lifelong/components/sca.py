"""``sca``: structured channel pruning scored by spiking activity, with regrowth (a training component).

Follows "Towards Efficient Deep Spiking Neural Networks Construction with Spiking Activity based Pruning" (SCA;
Li, Xu, Shen, Xu, Chen, Pan; ICML 2024): whole convolution channels are pruned by how active their neurons
are and regrown during training, so the network keeps a structured sparsity a plain dense kernel can exploit.
The paper has no public code; what is chosen here (docs/snn-conversion.md, "SCA", measures it):

- **prunable channels.** The inner channels of every block: in a ``SpikingBasicBlock`` the output channels of
  ``conv1`` (its ``bn1``, ``lif1`` and the input channels of ``conv2``); in a sequential conv-BN-activation net
  every conv-BN pair followed by another convolution. Channels of the residual stream and of the last
  convolution are kept (they are tied across blocks or feed the head). Frozen layers (an old DER extractor) are
  never touched. Sparsity is per layer, so no layer is emptied.
- **activity score** (``score``): ``potential``, the mean |membrane potential| of the channel's neurons over time
  steps, samples and positions (replayed from the LIF's input current and its spikes, which a forward hook on
  the LIF module sees; the neuron itself is not changed), or ``rate``, the channel's spike rate. For an ordinary
  activation (ReLU, clip) the pre-activation |x| and the mean output stand in. Scores are averaged over the
  training batches of one epoch; the least active channels go.
- **masking.** A pruned channel's batch-norm ``gamma`` and ``beta`` are set to 0 and re-zeroed after every
  optimizer step, so the channel's output after batch norm is exactly 0 in training and in evaluation: the
  neuron gets no current and never spikes, and the bias cannot re-inject signal (masking the convolution alone
  would leave ``beta``). The values at pruning time are kept for regrowth.
- **regrowth** (``regrow``): the paper regrows by a score its summary calls BN-gamma gradients; a zeroed
  channel's gamma gradient is 0 under the triangle surrogate (the gradient at zero potential), so the signal used
  is the gradient of the loss with respect to the channel's output (an additive per-channel offset), summed over
  time, samples and positions and averaged over the epoch's batches: the pruned channels whose output the loss
  wants most come back with their saved gamma and beta, and as many of the least active active channels go.
- **schedule.** Every ``every`` epochs the per-layer sparsity steps towards ``target_sparsity`` on the cubic
  ramp of gradual pruning (Zhu and Gupta 2017) over ``ramp`` updates; once reached, each update swaps up to
  ``regrow_fraction`` of the pruned channels. The ramp counts updates over the whole stream, not per experience.
- **slimming.** ``slim(model)`` returns a copy whose pruned channels are physically removed (smaller conv and BN
  tensors); since a pruned channel's output is exactly 0 and every activation here maps 0 to 0, the slim copy
  gives the masked network's outputs. It is a separate step, not applied in training, so the checkpoint keeps the
  shapes a resumed run rebuilds.
- **torchrun.** Scores are summed over the ranks before each update, so every rank prunes the same channels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lifelong.adapters.nets.spiking import LIF, SpikingBasicBlock
from lifelong.incremental.distributed import sum_over_ranks
from lifelong.incremental.learner import Component, RunContext, TrainingState
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register


@dataclass
class SCAConfig:
    """Options of ``sca`` (``--set sca.target_sparsity=0.5``)."""

    target_sparsity: float = 0.5
    every: int = 1
    ramp: int = 3
    regrow_fraction: float = 0.2
    score: Literal["potential", "rate"] = "potential"
    regrow: Literal["gradient", "none"] = "gradient"

    def validate(self) -> None:
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        if self.every < 1:
            raise ValueError(f"every must be at least 1, got {self.every}")
        if self.ramp < 1:
            raise ValueError(f"ramp must be at least 1, got {self.ramp}")
        if not 0.0 <= self.regrow_fraction <= 1.0:
            raise ValueError(f"regrow_fraction must be in [0, 1], got {self.regrow_fraction}")
        if self.score not in ("potential", "rate"):
            raise ValueError(f"score: {self.score!r} is not allowed; allowed values: potential, rate")
        if self.regrow not in ("gradient", "none"):
            raise ValueError(f"regrow: {self.regrow!r} is not allowed; allowed values: gradient, none")


# ------------------------------------------------------------------------------------------ prunable layers
@dataclass
class Unit:
    """One prunable group of channels: ``conv`` makes them, ``bn`` normalises them, ``act`` fires on them,
    ``consumer`` reads them. ``time_major``: the activation sees ``[T, B, C, ...]`` (a LIF), else ``[B, C, ...]``."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    act: nn.Module
    consumer: nn.Conv2d
    time_major: bool

    @property
    def channels(self) -> int:
        return self.bn.num_features


def find_units(model: nn.Module) -> list[Unit]:
    """The prunable channel groups of ``model`` (see the module docstring), in module order."""
    units: list[Unit] = []
    for name, module in model.named_modules():
        if isinstance(module, SpikingBasicBlock):
            units.append(Unit(f"{name}.conv1", module.conv1, module.bn1, module.lif1, module.conv2,
                              isinstance(module.lif1, LIF)))
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for i in range(len(children) - 2):
                (cname, conv), (_, bn), (_, act) = children[i], children[i + 1], children[i + 2]
                if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or conv.groups != 1:
                    continue
                consumer = next((m for _, m in children[i + 3:] if isinstance(m, nn.Conv2d)), None)
                if consumer is None or consumer.groups != 1:
                    continue
                units.append(Unit(f"{name}.{cname}" if name else cname, conv, bn, act, consumer,
                                  isinstance(act, LIF)))
    return units


def _membrane(lif: LIF, x_seq: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """The LIF's membrane potential before firing at every step, replayed from its input and its spikes
    (the charge and reset rules of ``adapters/nets/spiking.lif_multistep``)."""
    c = lif.cfg
    v_reset = None if c.reset == "soft" else c.v_reset
    v = torch.zeros_like(x_seq[0]) if not v_reset else torch.full_like(x_seq[0], v_reset)
    out = []
    for t in range(x_seq.shape[0]):
        x = x_seq[t]
        if v_reset is None:
            h = v + (x - v) / c.tau if c.decay_input else v - v / c.tau + x
            v = h - spikes[t] * c.v_threshold
        else:
            h = v + (x - (v - v_reset)) / c.tau if c.decay_input else v - (v - v_reset) / c.tau + x
            v = spikes[t] * v_reset + (1.0 - spikes[t]) * h
        out.append(h)
    return torch.stack(out)


# --------------------------------------------------------------------------------------------- component
@register("component", "sca", config=SCAConfig,
          summary="SCA: prune and regrow channels by spiking activity, BN re-masking, slimming (Li et al. 2024)")
class SCA(Component):
    """Prunes and regrows channels of the learner's model every ``every`` epochs; masks live in BN gamma/beta."""

    def __init__(self, config: SCAConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.masks: dict[str, torch.Tensor] = {}  # unit name -> bool [C], True = active
        self.saved: dict[str, torch.Tensor] = {}  # unit name -> [2, C] gamma and beta at pruning time
        self.updates = 0
        self.epochs_seen = 0
        self._units: list[Unit] = []
        self._activity: dict[str, torch.Tensor] = {}
        self._grad: dict[str, torch.Tensor] = {}
        self._batches: dict[str, int] = {}
        self._handles: list[Any] = []
        self.history: list[dict[str, Any]] = []

    # hooks --------------------------------------------------------------------------------------------
    def before_experience(self, state: TrainingState) -> None:
        units = find_units(state.model)
        if not units:  # an MLP, or a net without conv-bn-activation-conv groups: pruning would do nothing, silently
            raise UserError("component sca: the model has no prunable channel group (a convolution with batch norm "
                            "and an activation feeding another convolution); use a convolutional backbone "
                            "(model=cnn-28, resnet-reduced or a spiking-* net)")
        self._units = [u for u in units if u.conv.weight.requires_grad]
        for u in self._units:
            self.masks.setdefault(u.name, torch.ones(u.channels, dtype=torch.bool))
            self.saved.setdefault(u.name, torch.zeros(2, u.channels))
            self._handles.append(u.act.register_forward_hook(self._observer(u)))
        self._reset_scores()
        self._apply_masks()

    def _observer(self, unit: Unit) -> Any:
        dims_tm = (0, 1, 3, 4)

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if not module.training:
                return
            x = inputs[0].detach().float()
            y = out.detach().float()
            dims = dims_tm if unit.time_major else (0, 2, 3)
            if self.config.score == "rate":
                score = y.mean(dims)
            elif unit.time_major and isinstance(module, LIF):
                score = _membrane(module, x, y).abs().mean(dims)
            else:
                score = x.abs().mean(dims)
            key = unit.name
            self._activity[key] = self._activity.get(key, 0) + score.cpu()
            self._batches[key] = self._batches.get(key, 0) + 1
            if self.config.regrow == "gradient" and out.requires_grad:
                sum_dims = (0, 1, 3, 4) if unit.time_major else (0, 2, 3)

                def grad_hook(g: torch.Tensor) -> None:
                    self._grad[key] = self._grad.get(key, 0) + g.detach().float().sum(sum_dims).abs().cpu()

                out.register_hook(grad_hook)

        return hook

    def after_step(self, state: TrainingState) -> None:
        self._apply_masks()

    def after_epoch(self, state: TrainingState) -> None:
        self.epochs_seen += 1
        if self.epochs_seen % self.config.every == 0 and self._units:
            self.update()
        self._reset_scores()

    def after_experience(self, state: TrainingState) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._apply_masks()

    # pruning ------------------------------------------------------------------------------------------
    def sparsity_now(self) -> float:
        """The per-layer sparsity after ``self.updates`` updates (cubic ramp to the target)."""
        progress = min(1.0, self.updates / self.config.ramp)
        return self.config.target_sparsity * (1.0 - (1.0 - progress) ** 3)

    @torch.no_grad()
    def update(self) -> None:
        """One prune-and-regrow step on every unit, from the scores of the epoch that just ended."""
        self.updates += 1
        target = self.sparsity_now()
        record: dict[str, Any] = {"update": self.updates, "sparsity": target, "regrown": 0}
        for u in self._units:
            mask = self.masks[u.name]
            n_batches = max(1, self._batches.get(u.name, 0))
            if u.name not in self._activity:
                continue
            activity = self._synchronised(self._activity[u.name] / n_batches)
            grad = self._grad.get(u.name)
            grad = self._synchronised(grad) if grad is not None else None
            n_prune = min(u.channels - 1, int(round(target * u.channels)))
            pruned_now = (~mask).nonzero().flatten()
            regrow: list[int] = []
            if self.config.regrow == "gradient" and grad is not None and len(pruned_now) and n_prune >= len(pruned_now):
                k = int(self.config.regrow_fraction * len(pruned_now))
                if k:
                    order = torch.argsort(grad[pruned_now], descending=True)
                    regrow = pruned_now[order[:k]].tolist()
            new_mask = mask.clone()
            for c in regrow:
                new_mask[c] = True
                u.bn.weight[c], u.bn.bias[c] = float(self.saved[u.name][0, c]), float(self.saved[u.name][1, c])
            # prune the least active of the channels that were active during the epoch (never a regrown one)
            candidates = (mask & new_mask).nonzero().flatten()
            n_more = n_prune - int((~new_mask).sum())
            if n_more > 0:
                order = torch.argsort(activity[candidates])
                for c in candidates[order[:n_more]].tolist():
                    new_mask[c] = False
                    self.saved[u.name][0, c], self.saved[u.name][1, c] = float(u.bn.weight[c]), float(u.bn.bias[c])
            self.masks[u.name] = new_mask
            record["regrown"] += len(regrow)
        self.history.append(record)
        self._apply_masks()

    def _synchronised(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores summed over the ranks of a torchrun group, so every rank prunes the same channels."""
        info = getattr(self.context, "distributed", None)
        if info is None or not info.enabled:
            return scores
        return torch.tensor(sum_over_ranks(scores.tolist(), info, self.context.device))

    @torch.no_grad()
    def _apply_masks(self) -> None:
        for u in self._units:
            off = ~self.masks[u.name].to(u.bn.weight.device)
            u.bn.weight[off] = 0.0
            u.bn.bias[off] = 0.0

    def _reset_scores(self) -> None:
        self._activity, self._grad, self._batches = {}, {}, {}

    # state --------------------------------------------------------------------------------------------
    def channel_sparsity(self) -> float:
        """Fraction of the prunable channels that are pruned now."""
        total = sum(m.numel() for m in self.masks.values())
        return float(sum(int((~m).sum()) for m in self.masks.values())) / total if total else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.masks.items()},
                "saved": {k: v.clone() for k, v in self.saved.items()},
                "updates": self.updates, "epochs_seen": self.epochs_seen, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.masks = {k: v.clone().bool() for k, v in (state.get("masks") or {}).items()}
        self.saved = {k: v.clone() for k, v in (state.get("saved") or {}).items()}
        self.updates = int(state.get("updates", 0))
        self.epochs_seen = int(state.get("epochs_seen", 0))
        self.history = list(state.get("history") or [])

    def summary(self) -> dict[str, Any]:
        return {"channel_sparsity": self.channel_sparsity(), "updates": self.updates,
                "pruned_per_layer": {k: int((~m).sum()) for k, m in self.masks.items()},
                "channels_per_layer": {k: int(m.numel()) for k, m in self.masks.items()},
                "regrown_total": sum(r["regrown"] for r in self.history)}


# --------------------------------------------------------------------------------------------- slimming
def pruned_channels(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per unit of ``model``, the channels that are pruned (batch-norm gamma and beta both exactly 0)."""
    return {u.name: ((u.bn.weight == 0) & (u.bn.bias == 0)).detach().cpu() for u in find_units(model)}


@torch.no_grad()
def slim(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every pruned channel physically removed from its conv, BN and consumer conv.

    A pruned channel is one whose BN gamma and beta are both 0 (what ``sca`` leaves); its output is 0, so the copy
    computes what the masked model computes, with smaller tensors."""
    slim_model = copy.deepcopy(model)
    for u in find_units(slim_model):
        keep = ~((u.bn.weight == 0) & (u.bn.bias == 0))
        if bool(keep.all()):
            continue
        if not bool(keep.any()):
            keep[0] = True  # keep one (silent) channel so the shapes stay valid
        idx = keep.nonzero().flatten()
        u.conv.weight = nn.Parameter(u.conv.weight[idx].clone())
        if u.conv.bias is not None:
            u.conv.bias = nn.Parameter(u.conv.bias[idx].clone())
        u.conv.out_channels = len(idx)
        u.bn.weight = nn.Parameter(u.bn.weight[idx].clone())
        u.bn.bias = nn.Parameter(u.bn.bias[idx].clone())
        if u.bn.running_mean is not None:
            u.bn.running_mean = u.bn.running_mean[idx].clone()
            u.bn.running_var = u.bn.running_var[idx].clone()
        u.bn.num_features = len(idx)
        u.consumer.weight = nn.Parameter(u.consumer.weight[:, idx].clone())
        u.consumer.in_channels = len(idx)
    return slim_model
