"""``kd``: knowledge distillation into a (spiking) student, after KDSNN and LaSNN.

Follows KDSNN (Xu, Li, ... Pan, "Constructing Deep Spiking Neural Networks from Artificial Neural Networks with
Knowledge Distillation", CVPR 2023): an ANN teacher distils into an SNN student trained with surrogate gradients,
through its output (response KD) and through hidden layers (feature KD); teacher and student may differ in
architecture. ``feature=attention`` with ``schedule=layerwise`` is LaSNN (Hong, Shen, Qi, Wang, "LaSNN:
Layer-wise ANN-to-SNN Distillation", arXiv 2304.09101): attention maps bridge the ANN/SNN gap and the layers are
distilled one after the other. Neither paper has public code; what they leave open is chosen here:

- response KD: ``alpha * tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))``, batch mean, on the student's
  time-averaged logits, *added* to the learner's own loss (not a convex mix with the cross-entropy);
- feature KD: the last ``layers`` hidden layers of each network are paired shallow to deep. Hidden layers are the
  blocks of a spiking (or ReLU) ResNet, else the ReLUs of a ``Sequential`` feature extractor; spiking outputs are
  averaged over time (spike rates). Spatial sizes are matched by average pooling to the smaller one; ``hint``
  maps the student's channels to the teacher's by a 1x1 convolution (a linear layer for flat features) when
  they differ and takes the mean squared error; ``attention`` compares attention-transfer maps (the channel
  mean of squared activations, flattened and L2-normalised; Zagoruyko & Komodakis 2017), which need no adapter;
  weight ``beta``. The adapters are trained with the student by the component's own optimizer;
- ``schedule=layerwise``: in epoch e of an experience only pair ``min(e // epochs_per_layer, layers - 1)`` is
  distilled (shallow first); the response term stays on throughout (LaSNN's exact schedule is not public);
- the teacher: ``joint`` is an ANN backbone (``teacher_model``) trained at the same time on the same batches with
  its own cross-entropy and optimizer (SGD, ``teacher_lr``, momentum 0.9), its outputs detached for the student;
  ``checkpoint`` is the model of an earlier run (``teacher_run``: its folder, whose ``checkpoint.pt`` holds a
  backbone of ``adapters/nets/backbones.py``; same benchmark and seed, so the class order matches), frozen;
  ``previous`` is the learner's model at the end of the previous experience, frozen, distilled on the old
  classes only (KD against forgetting, as LwF); nothing to distil in the first experience.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.nets.backbones import BACKBONES, build_backbone
from lifelong.adapters.nets.spiking import SpikingBasicBlock, SpikingResNet
from lifelong.incremental.checkpoint import CHECKPOINT_NAME, load_checkpoint
from lifelong.incremental.distributed import average_gradients, broadcast_parameters
from lifelong.incremental.learner import Component, RunContext, TrainingState
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register


@dataclass
class KDConfig:
    """Options of ``kd`` (``--set kd.alpha=0.5``)."""

    alpha: float = 1.0  # weight of the response term
    temperature: float = 4.0
    feature: Literal["none", "hint", "attention"] = "none"
    beta: float = 1.0  # weight of the feature term
    layers: int = 2  # hidden layers paired (the last ones of each network)
    schedule: Literal["joint", "layerwise"] = "joint"
    epochs_per_layer: int = 1
    teacher: Literal["joint", "checkpoint", "previous"] = "joint"
    teacher_model: str = "auto"  # the joint teacher's backbone (adapters/nets/backbones.py); auto by input size
    teacher_run: str = ""  # the run folder of a checkpoint teacher
    teacher_lr: float = 0.01  # the joint teacher's and the adapters' learning rate

    def validate(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got {self.alpha}, {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.layers < 1 or self.epochs_per_layer < 1:
            raise ValueError("layers and epochs_per_layer must be at least 1")
        if self.teacher_lr <= 0:
            raise ValueError(f"teacher_lr must be positive, got {self.teacher_lr}")
        if self.teacher == "checkpoint" and not self.teacher_run:
            raise ValueError("teacher=checkpoint needs teacher_run=RUN_FOLDER (a finished or stopped run)")
        if self.teacher_model != "auto" and self.teacher_model not in BACKBONES:
            raise ValueError(f"teacher_model: {self.teacher_model!r} is not allowed; allowed values: auto, "
                             f"{', '.join(BACKBONES)}")


# ------------------------------------------------------------------------------------------------ the losses
def response_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, summed over classes, batch mean."""
    tau = temperature
    log_p_s = F.log_softmax(student.float() / tau, dim=1)
    p_t = F.softmax(teacher.detach().float() / tau, dim=1)
    return (tau * tau) * F.kl_div(log_p_s, p_t, reduction="batchmean")


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """Attention transfer: the channel mean of squared activations, flattened and L2-normalised: ``[B, H*W]``
    (``[B, F]`` for flat features)."""
    a = f.float().pow(2).mean(1) if f.dim() == 4 else f.float().pow(2)
    return F.normalize(a.flatten(1), dim=1)


def _match_spatial(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool both to the smaller spatial size; a 4-d map facing a flat feature is pooled globally."""
    if fs.dim() == 4 and ft.dim() == 4:
        h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
        return F.adaptive_avg_pool2d(fs, (h, w)), F.adaptive_avg_pool2d(ft, (h, w))
    flat = [f.mean(dim=(2, 3)) if f.dim() == 4 else f.flatten(1) for f in (fs, ft)]
    return flat[0], flat[1]


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The layers feature KD pairs, shallow to deep: the blocks of the newest (last) spiking or ReLU ResNet,
    else the basic blocks of a platform ResNet, else the ReLUs of the feature extractor."""
    snn = [m for m in model.modules() if isinstance(m, SpikingResNet)]
    if snn:
        return [b for b in snn[-1].blocks if isinstance(b, SpikingBasicBlock)]
    blocks = [m for m in model.modules() if type(m).__name__ == "_BasicBlock"]
    if blocks:
        return blocks
    return [m for m in model.modules() if isinstance(m, nn.ReLU)]


def _layer_output(out: torch.Tensor) -> torch.Tensor:
    """A layer's output as ``[B, ...]``: time-major 5-d outputs of a spiking ResNet are averaged over time."""
    return out.mean(0) if out.dim() == 5 else out


def _logits(out: Any) -> torch.Tensor:
    """Time-averaged logits of a model's output (a tensor, a time-major tensor or der's output dict)."""
    if isinstance(out, dict):
        out = out["logits"]
    return out.mean(0) if out.dim() == 3 else out


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, without gradients and without the forward hooks the original carries."""
    teacher = copy.deepcopy(model)
    for m in teacher.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    teacher.eval().requires_grad_(False)
    return teacher


class _Capture:
    """Forward hooks keeping the outputs of a list of layers (closures, so deep copies never copy them)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [layer.register_forward_hook(self._keeper(i)) for i, layer in enumerate(layers)]

    def _keeper(self, i: int) -> Callable[..., None]:
        outputs = self.outputs

        def keep(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
            outputs[i] = out

        return keep

    def take(self) -> list[torch.Tensor]:
        taken = [_layer_output(o) for o in self.outputs if o is not None]
        self.outputs[:] = [None] * len(self.outputs)
        return taken

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@register("component", "kd", config=KDConfig,
          summary="KDSNN/LaSNN: response and feature (hint or attention) distillation from an ANN or the previous model")
class KnowledgeDistillation(Component):
    """Distils a teacher into the learner's model (see the module docstring)."""

    config: KDConfig

    def __init__(self, config: KDConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.teacher: nn.Module | None = None
        self.adapters = nn.ModuleList()
        self.adapter_specs: list[list[int]] = []  # [kind (0 none, 1 conv, 2 linear), in, out] per pair
        self.optimizer: torch.optim.Optimizer | None = None
        self._student: _Capture | None = None
        self._teacher_capture: _Capture | None = None
        self._epoch = 0
        self.last: dict[str, float] = {}
        stream = context.stream
        if config.teacher == "joint":
            self.teacher = build_backbone(self._teacher_name(), stream.input_shape, stream.n_classes).to(context.device)
        elif config.teacher == "checkpoint":
            self.teacher = frozen_copy(self._load_teacher(Path(config.teacher_run))).to(context.device)

    def _teacher_name(self) -> str:
        """``teacher_model``, or for ``auto`` the ordinary backbone the input size calls for."""
        if self.config.teacher_model != "auto":
            return self.config.teacher_model
        side = max(self.context.stream.input_shape[1:])
        return "mlp" if side <= 8 else ("cnn-28" if side <= 28 else "resnet-reduced")

    def _load_teacher(self, run: Path) -> nn.Module:
        path = run / CHECKPOINT_NAME
        if not path.is_file():
            raise UserError(f"kd.teacher_run: no {CHECKPOINT_NAME} in {run} (expected the folder of an earlier run)")
        state = load_checkpoint(path)
        config = state.get("config", {})
        model_name = config.get("strategy_config", {}).get("model", "auto")
        if int(config.get("seed", -1)) != int(self.context.seed):
            raise UserError(f"kd.teacher_run: {run} was run with seed {config.get('seed')}, this run has seed "
                            f"{self.context.seed}; the class order differs, so its logits do not line up")
        stream = self.context.stream
        try:
            teacher = build_backbone(model_name, stream.input_shape, stream.n_classes)
            teacher.load_state_dict(state["learner"]["model"])
        except (RuntimeError, KeyError) as exc:
            raise UserError(f"kd.teacher_run: the model in {path} is not a backbone of this stream "
                            f"({config.get('strategy')} on {config.get('benchmark')}): {str(exc).splitlines()[0]}")
        return teacher

    # -- hooks ---------------------------------------------------------------------------------------------
    def before_experience(self, state: TrainingState) -> None:
        self._epoch = 0
        if self.config.feature != "none":
            self._student = _Capture(hidden_layers(state.model)[-self.config.layers:])
            if self.teacher is not None:
                self._teacher_capture = _Capture(hidden_layers(self.teacher)[-self.config.layers:])

    def extra_loss(self, state: TrainingState) -> torch.Tensor | None:
        assert state.x is not None and state.logits is not None and state.y is not None
        student_feats = self._student.take() if self._student is not None else []
        if self.teacher is None or (self.config.teacher == "previous" and state.known_classes == 0):
            return None
        if self.config.teacher == "joint":
            self.teacher.train()
            t_out = self.teacher(state.x)
            teacher_loss = F.cross_entropy(_logits(t_out).float(), state.y)
            teacher_loss.backward()  # the teacher learns from the labels only, through its own optimizer
            self.last["teacher_loss"] = float(teacher_loss.detach())
            t_logits = _logits(t_out).detach()
        else:
            with torch.no_grad():
                t_logits = _logits(self.teacher(state.x))
        teacher_feats = [f.detach() for f in self._teacher_capture.take()] if self._teacher_capture else []
        s_logits = state.logits
        n = state.known_classes if self.config.teacher == "previous" else min(s_logits.shape[1], t_logits.shape[1])
        loss = self.config.alpha * response_kd(s_logits[:, :n], t_logits[:, :n], self.config.temperature)
        self.last["response"] = float(loss.detach())
        if student_feats and teacher_feats:
            feature = self._feature_loss(student_feats, teacher_feats)
            self.last["feature"] = float(feature.detach())
            loss = loss + self.config.beta * feature
        self._ensure_optimizer()
        return loss

    def _active_pairs(self, n_pairs: int) -> list[int]:
        if self.config.schedule == "joint":
            return list(range(n_pairs))
        return [min(self._epoch // self.config.epochs_per_layer, n_pairs - 1)]

    def _feature_loss(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        n = min(len(student), len(teacher))
        student, teacher = student[-n:], teacher[-n:]
        if not self.adapter_specs:
            self._build_adapters(student, teacher)
        total = student[0].new_zeros(())
        for i in self._active_pairs(n):
            fs, ft = _match_spatial(student[i].float(), teacher[i].float())
            if self.config.feature == "attention" and fs.dim() == 4:
                total = total + (attention_map(fs) - attention_map(ft)).pow(2).sum(1).mean()
            else:
                total = total + F.mse_loss(self.adapters[i](fs), ft)
        return total

    def _build_adapters(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
        """A 1x1 convolution (or a linear layer for flat features) per pair whose widths differ."""
        specs = []
        for fs, ft in zip(student, teacher):
            fs, ft = _match_spatial(fs, ft)
            c_s, c_t = fs.shape[1], ft.shape[1]
            kind = 0 if c_s == c_t or (self.config.feature == "attention" and fs.dim() == 4) else (1 if fs.dim() == 4 else 2)
            specs.append([kind, int(c_s), int(c_t)])
        self._make_adapters(specs)

    def _make_adapters(self, specs: list[list[int]]) -> None:
        self.adapter_specs = specs
        layers: list[nn.Module] = []
        for kind, c_in, c_out in specs:
            layers.append(nn.Identity() if kind == 0 else
                          nn.Conv2d(c_in, c_out, 1, bias=False) if kind == 1 else nn.Linear(c_in, c_out, bias=False))
        self.adapters = nn.ModuleList(layers).to(self.context.device)

    def _trainable(self) -> list[nn.Parameter]:
        params = list(self.adapters.parameters())
        if self.config.teacher == "joint" and self.teacher is not None:
            params = list(self.teacher.parameters()) + params
        return params

    def _ensure_optimizer(self) -> None:
        if self.optimizer is None and self._trainable():
            # under torchrun the joint teacher and the adapters start equal on every rank and (after_step) take
            # the step of the gradients averaged over the ranks, as the DDP-wrapped student does
            broadcast_parameters(self._trainable(), self.context.distributed)
            self.optimizer = torch.optim.SGD(self._trainable(), lr=self.config.teacher_lr, momentum=0.9)

    def after_step(self, state: TrainingState) -> None:
        if self.optimizer is not None:
            average_gradients(self._trainable(), self.context.distributed)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def after_epoch(self, state: TrainingState) -> None:
        self._epoch += 1

    def after_experience(self, state: TrainingState) -> None:
        for capture in (self._student, self._teacher_capture):
            if capture is not None:
                capture.close()
        self._student = self._teacher_capture = None
        if self.config.teacher == "previous":
            self.teacher = frozen_copy(state.model)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"adapter_specs": [list(s) for s in self.adapter_specs],
                                 "adapters": {k: v.detach().cpu().clone() for k, v in self.adapters.state_dict().items()},
                                 "has_teacher": self.teacher is not None}
        if self.config.teacher == "joint" and self.teacher is not None:
            state["teacher"] = {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """The previous-model teacher is the learner's model as loaded (the model at the end of the last
        experience), so it is not stored twice."""
        if state.get("adapter_specs"):
            self._make_adapters([[int(v) for v in s] for s in state["adapter_specs"]])
            self.adapters.load_state_dict(state["adapters"])
        if "teacher" in state and self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.config.teacher == "previous" and state.get("has_teacher"):
            self.teacher = frozen_copy(model)
        self.optimizer = None
        if state.get("optimizer") is not None:
            self._ensure_optimizer()
            assert self.optimizer is not None
            self.optimizer.load_state_dict(state["optimizer"])

    def summary(self) -> dict[str, Any]:
        return {"teacher": self.config.teacher, "feature": self.config.feature, "pairs": len(self.adapter_specs),
                "adapters": [s for s in self.adapter_specs if s[0]], "last_batch": dict(self.last)}
