"""``der``: Dynamically Expandable Representation (Yan, Xie and He, CVPR 2021) for ordinary networks.

What it takes from the paper (and from PyCIL's ``DER`` learner, which the ALADE-SNN authors built on):
- each task adds a feature extractor initialised as a copy of the previous one; earlier extractors are frozen
  (no gradients, batch norm in eval mode), so their parameters never change again;
- features of all extractors are concatenated and a classifier over every seen class is rebuilt each task; the
  old classes' weights over the old features are copied into it (PyCIL), unless ``reuse_old_classifier=false``;
- an auxiliary head on the new extractor's features alone with 1 + (new classes) outputs, where all old classes
  share label 0, adds its cross-entropy to the loss (weight ``aux_weight``);
- iCaRL herding memory with a fixed total budget (``mem_size``, the same default as the other replay baselines);
- the paper's classifier-learning stage: after each task t >= 1 the classifier is retrained for
  ``finetune_epochs`` on a class-balanced subset (every class cut to the smallest class's count) of the current
  data and the memory, with the representation frozen.

Where it departs or fills gaps: no channel-pruning (the "DER w/o P" row of the papers); the extractor is the
ResNet of ``adapters/spiking.py`` with ReLU neurons (``resnet-tiny`` for 8x8 digits, ``resnet-cifar`` otherwise)
so that ``der`` and ``alade-snn`` share one architecture, or any platform backbone by name; the balanced
fine-tuning set is drawn once per task from non-augmented samples and the classifier is trained on their cached
(frozen) features, which is exact because the representation is frozen and in eval mode.

The learner is a plain PyTorch loop over a DataLoader of the experience's dataset plus the memory, with the
network in ``self.model``, so that DDP wrapping stays possible. ``alade-snn`` subclasses it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lifelong.adapters.backbones import BACKBONES
from lifelong.adapters.spiking import SpikingResNet, count_ops
from lifelong.platform import distributed
from lifelong.platform.device import LossScaler, autocast
from lifelong.platform.errors import UserError
from lifelong.platform.learner import Learner, RunContext, StrategyConfig
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._herding import ExemplarMemory, balanced_indices

RESNET_MODELS: tuple[str, ...] = ("resnet-tiny", "resnet-cifar")


@dataclass
class DERConfig(StrategyConfig):
    """Settings of ``der``; the defaults finish a 5-experience split-digits run in well under a minute."""

    model: str = "auto"  # resnet-tiny | resnet-cifar | a platform backbone (mlp, cnn-small, ...); auto by input size
    width_mult: float = 1.0
    epochs: int = 12
    first_epochs: int = 0  # epochs of the first task; 0 = epochs
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: list[int] = field(default_factory=lambda: [8, 11])
    lr_gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up; the classifier and aux head are re-initialised when it ends
    mem_size: int = 200
    aux_loss: bool = True
    aux_weight: float = 1.0
    reuse_old_classifier: bool = True
    classifier_bias: bool = True
    finetune_epochs: int = 30
    finetune_lr: float = 0.1
    finetune_milestones: list[int] = field(default_factory=lambda: [15])
    finetune_weight_decay: float = 5e-4
    finetune_temperature: float = 1.0
    finetune_reinit: bool = False
    bn_recalibrate: bool = True  # re-estimate the new extractor's batch-norm statistics after its task

    def validate(self) -> None:
        super().validate()
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer: {self.optimizer!r} is not allowed; allowed values: 'sgd', 'adam'")
        for name in ("first_epochs", "warmup_epochs", "mem_size", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {self.width_mult}")
        if self.finetune_temperature <= 0:
            raise ValueError(f"finetune_temperature must be positive, got {self.finetune_temperature}")
        if self.finetune_lr <= 0:
            raise ValueError(f"finetune_lr must be positive, got {self.finetune_lr}")


class _TimeMajor(nn.Module):
    """Give a ``[B, F]`` extractor the time-major output ``[1, B, F]`` the expandable network expects."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).unsqueeze(0)


class ExpandableNet(nn.Module):
    """DER's network: one extractor per task, concatenated features, a classifier over all seen classes.

    Extractors return time-major features ``[T, B, F]`` (T = 1 for an ordinary network), so the same class
    serves the spiking and the non-spiking method; logits are ``[T, B, classes]`` (the classifier is applied at
    every time step) and the prediction averages them over time.
    """

    def __init__(self, make_extractor: Callable[[], nn.Module], feature_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.make_extractor = make_extractor
        self.feature_dim = feature_dim
        self.bias = bias
        self.extractors = nn.ModuleList()
        self.classifier: nn.Linear | None = None
        self.aux_classifier: nn.Linear | None = None
        self.task_sizes: list[int] = []

    @property
    def n_classes(self) -> int:
        return sum(self.task_sizes)

    @property
    def n_tasks(self) -> int:
        return len(self.task_sizes)

    def add_task(self, n_new: int, *, copy_previous: bool = True, reuse_old_classifier: bool = False) -> None:
        """Grow by one extractor (a copy of the last one) and ``n_new`` classes; freeze the older extractors."""
        device = next(self.parameters()).device if any(True for _ in self.parameters()) else torch.device("cpu")
        extractor = self.make_extractor().to(device)
        if copy_previous and len(self.extractors):
            extractor.load_state_dict(self.extractors[-1].state_dict())
        for old in self.extractors:
            old.requires_grad_(False)
            old.eval()
        self.extractors.append(extractor)
        old_classes, old_dim = self.n_classes, self.feature_dim * (len(self.extractors) - 1)
        self.task_sizes.append(n_new)
        classifier = nn.Linear(self.feature_dim * len(self.extractors), self.n_classes, bias=self.bias).to(device)
        if reuse_old_classifier and self.classifier is not None:
            with torch.no_grad():
                classifier.weight[:old_classes, :old_dim] = self.classifier.weight
                if self.bias:
                    classifier.bias[:old_classes] = self.classifier.bias
        self.classifier = classifier
        self.aux_classifier = (
            nn.Linear(self.feature_dim, n_new + 1, bias=self.bias).to(device) if len(self.extractors) > 1 else None
        )

    def train(self, mode: bool = True) -> "ExpandableNet":
        super().train(mode)
        for old in list(self.extractors)[:-1]:
            old.eval()  # frozen extractors keep their batch-norm statistics
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated time-major features ``[T, B, F * n_tasks]``."""
        feats = []
        for i, extractor in enumerate(self.extractors):
            if i < len(self.extractors) - 1:
                with torch.no_grad():
                    feats.append(extractor(x))
            else:
                feats.append(extractor(x))
        return torch.cat(feats, dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.classifier is None:
            raise RuntimeError("the network has no task yet; train an experience first")
        feats = self.features(x)
        out = {"features": feats, "logits": self.classifier(feats)}
        if self.aux_classifier is not None:
            out["aux_logits"] = self.aux_classifier(feats[..., -self.feature_dim :])
        return out


class _MemoryDataset(Dataset):
    """Exemplars as ``(x, y, task_label)`` like the experience datasets."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], 0


def _collate(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(x, y, ...)`` samples whatever the type of y (int or 0-d tensor): memory and stream mix."""
    return torch.stack([torch.as_tensor(b[0]) for b in batch]), torch.tensor([int(b[1]) for b in batch])


def _materialise(dataset: Any, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of a dataset as ``(x, y)`` tensors on the CPU."""
    xs, ys = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate):
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]).long())
    return torch.cat(xs), torch.cat(ys)


def lr_at(epoch: int, base: float, milestones: list[int], gamma: float, warmup: int = 0) -> float:
    """Learning rate of ``epoch``: linear warm-up, then multiplied by ``gamma`` at each milestone passed."""
    if warmup and epoch < warmup:
        return base * (epoch + 1) / warmup
    return base * gamma ** sum(1 for m in milestones if epoch >= m)


@register(
    "strategy",
    "der",
    config=DERConfig,
    summary="Dynamically Expandable Representation (Yan et al. 2021): one frozen extractor per task, herding memory",
    capabilities=Capabilities(uses_replay_memory=True, distributed_safe=True),
)
class DERLearner(Learner):
    """DER over a class-incremental stream (see the module docstring)."""

    config: DERConfig

    def __init__(self, config: DERConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.device = context.device
        self.n_total = context.stream.n_classes
        self.input_shape = tuple(context.stream.input_shape)
        make, dim = self._extractor_factory()
        self.model = ExpandableNet(make, dim, bias=config.classifier_bias).to(self.device)
        self.memory = ExemplarMemory(config.mem_size)
        self.history: list[dict[str, Any]] = []
        self._probe: torch.Tensor | None = None
        self._teacher: dict[str, torch.Tensor] | None = None
        self._net: nn.Module = self.model  # the model, DDP-wrapped while a task trains under torchrun

    # -- the network -------------------------------------------------------------------------------------
    def _extractor_factory(self) -> tuple[Callable[[], nn.Module], int]:
        """How to build one extractor and its feature width (the spiking subclass overrides this)."""

        name = self.config.model
        if name == "auto":
            side = max(self.input_shape[1:]) if len(self.input_shape) > 1 else 0
            name = "resnet-tiny" if side <= 8 else "resnet-cifar"
        if name in RESNET_MODELS:
            layout = name.split("-", 1)[1]

            def make() -> nn.Module:
                return SpikingResNet(self.input_shape[0], layout=layout, width_mult=self.config.width_mult, spiking=False)

            return make, make().feature_dim
        if name not in BACKBONES:
            raise UserError(
                f"model: unknown extractor {name!r} for der; allowed values: auto, {', '.join(RESNET_MODELS)}, "
                f"{', '.join(BACKBONES)}"
            )

        def make_backbone() -> nn.Module:
            return _TimeMajor(BACKBONES[name](self.input_shape)[0])

        return make_backbone, BACKBONES[name](self.input_shape)[1]

    def _add_task(self, n_new: int) -> None:
        self.model.add_task(n_new, copy_previous=True, reuse_old_classifier=self.config.reuse_old_classifier)

    # -- training ----------------------------------------------------------------------------------------
    def train_experience(self, experience: Any) -> None:
        task = self.model.n_tasks
        info = self.context.distributed
        dataset = experience.dataset
        # under torchrun each rank trains on its shard; herding, batch-norm statistics and the fine-tuning set
        # use the whole experience (every rank holds it), so every rank keeps the same model and memory
        whole = distributed.whole_experience(experience).dataset
        x_eval, y_eval = _materialise(whole.eval() if hasattr(whole, "eval") else whole)
        known = self.model.n_classes
        classes = sorted(int(c) for c in torch.unique(y_eval))
        if not classes or classes[0] < known or classes != list(range(known, known + len(classes))):
            raise UserError(
                f"{self._name()} needs a class-incremental stream whose experience {task} brings the new classes "
                f"{known}..{known + len(classes) - 1}; it holds classes {classes}"
            )
        self._teacher = self._snapshot_classifier() if task > 0 else None
        self._add_task(len(classes))
        gen = torch.Generator().manual_seed(int(self.context.seed) * 1009 + task)

        parts: list[Dataset] = [dataset]
        if len(self.memory):  # each rank replays its shard of the memory, as it trains on its shard of the data
            mine = torch.as_tensor(distributed.shard_indices(len(self.memory), info), dtype=torch.long)
            parts.append(_MemoryDataset(self.memory.x[mine], self.memory.y[mine]))
        loader = DataLoader(
            ConcatDataset(parts),
            batch_size=self.config.batch_size // info.world_size,  # batch_size is the global batch
            shuffle=True,
            generator=gen,
            drop_last=False,
            collate_fn=_collate,
        )
        epochs = self.config.first_epochs if (task == 0 and self.config.first_epochs) else self.config.epochs
        if self.model.aux_classifier is not None and not self.config.aux_loss:
            self.model.aux_classifier.requires_grad_(False)  # unused: DDP needs every trainable parameter used
        self._net = distributed.wrap(self.model, info, self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self._make_optimizer(params, self.config.lr, self.config.weight_decay)
        scaler = LossScaler(self.config.precision, self.device)
        log: dict[str, Any] = {"task": task, "classes": classes, "epochs": epochs, "loss": []}
        for epoch in range(epochs):
            lr = lr_at(epoch, self.config.lr, self.config.lr_milestones, self.config.lr_gamma, self.config.warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if self.config.warmup_epochs and epoch == self.config.warmup_epochs:
                self._reset_heads()
            self._net.train()
            total, n = 0.0, 0
            for batch in loader:
                xb = batch[0].to(self.device)
                yb = torch.as_tensor(batch[1]).long().to(self.device)
                with autocast(self.config.precision, self.device):
                    loss = self._loss(xb, yb, known)
                optimizer.zero_grad(set_to_none=True)
                scaler.backward(loss)
                scaler.step(optimizer)
                self._after_optimizer_step(known)
                total += float(loss.detach()) * len(yb)
                n += len(yb)
            log["loss"].append(total / max(1, n))
        self._net = self.model
        if self.config.bn_recalibrate:
            self._recalibrate_batch_norm(torch.cat([x_eval, self.memory.x]) if len(self.memory) else x_eval)
        self.model.eval()
        if task > 0 and self.config.finetune_epochs > 0:
            log["finetune"] = self._finetune_classifier(x_eval, y_eval, known, gen)
        self._update_memory(x_eval, y_eval)
        self._probe = x_eval[:256]
        self.history.append(log)

    def _name(self) -> str:
        return "der"

    @torch.no_grad()
    def _recalibrate_batch_norm(self, x: torch.Tensor) -> None:
        """Recompute the new extractor's batch-norm statistics as exact averages over its training data.

        The running averages (momentum 0.1) lag the weights; after a short schedule they are far from the
        statistics the network was trained with, and a spiking network, whose thresholds make it sensitive to
        that shift, can go silent in eval mode. One forward pass fixes it (as SWA's ``update_bn`` does).
        """
        extractor = self.model.extractors[-1]
        norms = [m for m in extractor.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        extractor.train()
        for i in range(0, len(x), self.config.batch_size):
            extractor(x[i : i + self.config.batch_size].to(self.device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        extractor.eval()

    def _make_optimizer(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        if self.config.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.config.momentum, weight_decay=weight_decay)

    def _reset_heads(self) -> None:
        assert self.model.classifier is not None
        self.model.classifier.reset_parameters()
        if self.model.aux_classifier is not None:
            self.model.aux_classifier.reset_parameters()

    def _snapshot_classifier(self) -> dict[str, torch.Tensor]:
        """The previous model's classifier: with the frozen old extractors, it *is* the previous model."""
        assert self.model.classifier is not None
        snap = {"weight": self.model.classifier.weight.detach().clone()}
        if self.model.classifier.bias is not None:
            snap["bias"] = self.model.classifier.bias.detach().clone()
        return snap

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor, known: int) -> torch.Tensor:
        """Cross-entropy of the time-averaged logits plus the auxiliary loss (subclasses add distillation)."""
        out = self._net(xb)
        logits = out["logits"].mean(0)
        loss = F.cross_entropy(logits, yb)
        if self.config.aux_loss and "aux_logits" in out:
            aux_target = torch.where(yb < known, torch.zeros_like(yb), yb - known + 1)
            loss = loss + self.config.aux_weight * F.cross_entropy(out["aux_logits"].mean(0), aux_target)
        return loss + self._extra_loss(out, logits, yb, known)

    def _extra_loss(self, out: dict[str, torch.Tensor], logits: torch.Tensor, yb: torch.Tensor, known: int) -> torch.Tensor:
        return logits.new_zeros(())

    def _after_optimizer_step(self, known: int) -> None:
        """Called after every optimizer step of the representation stage (OtoN lives here in alade-snn)."""

    # -- classifier fine-tuning ------------------------------------------------------------------------
    @torch.no_grad()
    def _frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged concatenated features (the classifier is linear, so this equals per-step then mean)."""
        self.model.eval()
        with autocast(self.config.precision, self.device):
            out = [self.model.features(x[i : i + 256].to(self.device)).mean(0).float() for i in range(0, len(x), 256)]
        return torch.cat(out)

    def _finetune_controller(self) -> Any:
        """The logit-alignment controller, if any (``alade-snn``); DER has none."""
        return None

    def _finetune_classifier(
        self, x_cur: torch.Tensor, y_cur: torch.Tensor, known: int, gen: torch.Generator
    ) -> dict[str, Any]:
        """Retrain the classifier alone on a class-balanced subset of current data + memory."""
        cfg = self.config
        xs, ys = [x_cur], [y_cur]
        if len(self.memory):
            xs.append(self.memory.x)
            ys.append(self.memory.y)
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        idx = balanced_indices(y_all, generator=gen)
        feats = self._frozen_features(x_all[idx])
        targets = y_all[idx].to(self.device)
        clf = self.model.classifier
        assert clf is not None
        if cfg.finetune_reinit:
            clf.reset_parameters()
        clf.requires_grad_(True)
        optimizer = torch.optim.SGD(clf.parameters(), lr=cfg.finetune_lr, momentum=0.9, weight_decay=cfg.finetune_weight_decay)
        controller = self._finetune_controller()
        start = self._alignment_start()
        log: dict[str, Any] = {"samples": len(idx), "per_class": len(idx) // max(1, len(torch.unique(y_all))), "b": [], "gap": []}
        for epoch in range(cfg.finetune_epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, cfg.finetune_lr, cfg.finetune_milestones, 0.1)
            sums, counts = [0.0, 0.0], [0, 0]
            perm = torch.randperm(len(targets), generator=gen)
            for i in range(0, len(perm), cfg.batch_size):
                sel = perm[i : i + cfg.batch_size].to(self.device)
                f, y = feats[sel], targets[sel]
                logits = clf(f)
                target_logit = logits.detach().gather(1, y[:, None]).squeeze(1)
                old = y < known
                sums[0] += float(target_logit[old].sum())
                counts[0] += int(old.sum())
                sums[1] += float(target_logit[~old].sum())
                counts[1] += int((~old).sum())
                if controller is not None and epoch >= start and controller.b != 0.0:
                    offset = torch.zeros_like(logits)
                    offset[:, known:] = controller.b
                    logits = logits + offset
                loss = F.cross_entropy(logits / cfg.finetune_temperature, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if counts[0] and counts[1]:
                avg_old, avg_new = sums[0] / counts[0], sums[1] / counts[1]
                log["gap"].append(avg_new - avg_old)
                if controller is not None and epoch >= start:
                    controller.update(avg_new, avg_old)
            if controller is not None:
                log["b"].append(controller.b)
        return log

    def _alignment_start(self) -> int:
        return self.config.finetune_epochs

    # -- memory ----------------------------------------------------------------------------------------
    def _update_memory(self, x_cur: torch.Tensor, y_cur: torch.Tensor) -> None:
        if self.config.mem_size == 0:
            return
        self.memory.update(x_cur, y_cur, lambda xb: self._frozen_features(xb))

    # -- inference -------------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged logits over the seen classes, padded with a very low value for unseen ones."""
        x = x.to(self.device)
        if self.model.classifier is None:
            return torch.zeros(len(x), self.n_total, device=self.device)
        self.model.eval()
        with torch.no_grad(), autocast(self.config.precision, self.device):
            logits = self.model(x)["logits"].mean(0).float()
        if logits.shape[1] < self.n_total:
            pad = logits.new_full((len(x), self.n_total - logits.shape[1]), torch.finfo(logits.dtype).min)
            logits = torch.cat([logits, pad], dim=1)
        return logits

    # -- state -----------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"task_sizes": list(self.model.task_sizes), "memory": self.memory.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Rebuild the network's structure (one extractor per finished task) before its weights are loaded."""
        sizes = [int(s) for s in state.get("task_sizes", [])]
        make, dim = self._extractor_factory()
        self.model = ExpandableNet(make, dim, bias=self.config.classifier_bias).to(self.device)
        for n_new in sizes:
            self.model.add_task(n_new, copy_previous=False)
        self.memory.load_state_dict(state.get("memory", {}))

    def summary(self) -> dict[str, Any]:
        """Network size, the cost of one forward pass (MACs; SOPs and spike rates for spiking networks)."""
        out: dict[str, Any] = {
            "n_extractors": self.model.n_tasks,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "memory_size": len(self.memory),
            "tasks": [
                {k: v for k, v in h.items() if k != "loss"} | {"final_loss": h["loss"][-1] if h["loss"] else None}
                for h in self.history
            ],
        }
        probe = self._probe if self._probe is not None else self.memory.x
        if probe is not None and self.model.classifier is not None:
            out.update(self._cost(probe[:256].to(self.device)))
        return out

    def _cost(self, probe: torch.Tensor) -> dict[str, Any]:

        self.model.eval()
        ops = count_ops(self.model, lambda: self.model(probe), len(probe))
        return {"ops": ops.as_dict()}

    def clone_model(self) -> nn.Module:
        """A deep copy of the network (for inspection and tests)."""
        return copy.deepcopy(self.model)
