"""``der``: Dynamically Expandable Representation (Yan, Xie and He, CVPR 2021) for ordinary networks.

What it takes from the paper (and from PyCIL's ``DER`` learner):
- each task adds a feature extractor initialised as a copy of the previous one; earlier extractors are frozen
  (no gradients, batch norm in eval mode), so their parameters never change again;
- features of all extractors are concatenated and a classifier over every seen class is rebuilt each task; the
  old classes' weights over the old features are copied into it (PyCIL), unless ``reuse_old_classifier=false``;
- an auxiliary head on the new extractor's features alone with 1 + (new classes) outputs, where all old classes
  share label 0, adds its cross-entropy to the loss (weight ``aux_weight``);
- iCaRL herding memory with a fixed total budget (``mem_size``, the same default as the other replay baselines);
- the paper's classifier-learning stage: after each task t >= 1 the classifier is retrained for
  ``finetune_epochs`` on a class-balanced subset (every class cut to the smallest class's count) of the current
  data and the memory, with the representation frozen (SGD with momentum 0.9, as PyCIL).

Where it departs or fills gaps: no channel-pruning (the "DER w/o P" row of the papers); the extractor
(``model``) is a ResNet of ``adapters/nets/expandable.py`` with ReLU neurons (``resnet-tiny`` for 8x8 digits,
``resnet-cifar`` otherwise; ``auto`` picks by input size), an architecture that also exists as a spiking
network so that a spiking method can be compared on the same one, or any platform backbone by name; the
balanced fine-tuning set is drawn once per task from non-augmented samples and the classifier is trained on
their cached (frozen) features, which is exact because the representation is frozen and in eval mode; the
step learning rate is computed in closed form (``lr_at``), not by ``MultiStepLR``.

The learner is a plain PyTorch loop over a DataLoader of the experience's dataset plus the memory, with the
network (``adapters/nets/expandable.py``'s ``ExpandableNet``) in ``self.model``, so that DDP wrapping stays possible.
A learner built on it may change the extractor (``_extractor_factory``), add a loss term (``_extra_loss``), act
after every optimizer step (``_after_optimizer_step``) and change the logits the classifier stage trains on
(``_finetune_logits``); DER itself does none of these. Training components (``components=[...]``,
``incremental/learner.py``) are called around the representation stage (their loss terms join the loss, their
``after_step`` follows ``_after_optimizer_step``; the classifier stage is the learner's own), and ``loss=tet``
replaces the cross-entropy of the time-averaged logits by TET's per-time-step cross-entropy (the auxiliary
loss stays on time-averaged logits).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lifelong.adapters.nets.backbones import BACKBONES
from lifelong.adapters.nets.expandable import (
    RESNET_ARCHITECTURES,
    FUSION_ARCHITECTURES,
    TEMPORAL_ARCHITECTURES,
    ExpandableNet,
    check_architecture,
    extractor_factory,
)
from lifelong.adapters.nets.spiking import count_ops
from lifelong.incremental import distributed
from lifelong.incremental.learner import (
    ComposableConfig,
    Learner,
    RunContext,
    StrategyConfig,
    TrainingState,
    build_components,
    make_optimizer,
    tet_loss,
)
from lifelong.platform.device import LossScaler, autocast
from lifelong.platform.errors import UserError
from lifelong.platform.registry import Capabilities, list_plugins, register
from lifelong.strategies._encoding import build_encoder, check_encoder
from lifelong.strategies._herding import ExemplarMemory, balanced_indices
from lifelong.strategies._samples import MemoryDataset, collate, materialise


@dataclass
class DERConfig(ComposableConfig):
    """Settings of ``der``; the defaults finish a 5-experience split-digits run in well under a minute."""

    #: the extractor architectures ``model`` may name besides ``auto`` (see ``adapters/nets/expandable.py``)
    MODELS: ClassVar[tuple[str, ...]] = (*RESNET_ARCHITECTURES, *TEMPORAL_ARCHITECTURES, *FUSION_ARCHITECTURES,
                                         *BACKBONES)

    model: str = "auto"  # the extractor: resnet-tiny | resnet-cifar | a platform backbone (mlp, ...); auto by input size
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
    #: the spike encoder of an audio stream (a registered ``encoder``; ``auto`` = spiketrum for sound, direct
    #: coding for images; ``direct`` = images only) and its options (e.g. ``{spikes_per_second: 2000}``)
    encoder: str = "auto"
    encoder_config: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        check_architecture(self.model, self.MODELS)
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
        check_encoder(self.encoder, self.encoder_config)


def lr_at(epoch: int, base: float, milestones: list[int], gamma: float, warmup: int = 0) -> float:
    """Learning rate of ``epoch``: linear warm-up, then multiplied by ``gamma`` at each milestone passed.

    PyCIL steps ``torch.optim.lr_scheduler.MultiStepLR`` instead; that multiplies the current rate at each
    milestone, which differs in the last bits from ``base * gamma ** k`` (e.g. lr 0.01, milestones [8, 11]:
    1e-4 against 1.0000000000000002e-4 from epoch 11 on) and has no warm-up, so the closed form stays.
    """
    if warmup and epoch < warmup:
        return base * (epoch + 1) / warmup
    return base * gamma ** sum(1 for m in milestones if epoch >= m)


def finetune_optimizer(config: DERConfig) -> StrategyConfig:
    """The classifier stage's optimizer settings: SGD with momentum 0.9 at ``finetune_lr`` and
    ``finetune_weight_decay``, whatever the representation stage uses (as PyCIL)."""
    return StrategyConfig(
        optimizer="sgd", lr=config.finetune_lr, momentum=0.9, weight_decay=config.finetune_weight_decay
    )


class FinetuneLogits:
    """The logits the classifier stage trains on; DER's are the classifier's own (the identity).

    A learner built on DER may return a subclass from ``DERLearner._finetune_logits`` to change them: it is
    called on every batch's logits with the epoch, and told once per epoch the mean target-class logit of
    new-class and of old-class samples (``None`` when one side had no samples); what ``end_epoch`` returns is
    appended to the fine-tuning log, key by key.
    """

    def __call__(self, logits: torch.Tensor, epoch: int) -> torch.Tensor:
        return logits

    def end_epoch(self, epoch: int, averages: tuple[float, float] | None) -> dict[str, float]:
        return {}


@register(
    "strategy",
    "der",
    config=DERConfig,
    summary="Dynamically Expandable Representation (Yan et al. 2021): one frozen extractor per task, herding memory",
    capabilities=Capabilities(uses_replay_memory=True, distributed_safe=True, accepts_components=True),
)
class DERLearner(Learner):
    """DER over a class-incremental stream (see the module docstring)."""

    config: DERConfig

    def __init__(self, config: DERConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.device = context.device
        self.n_total = context.stream.n_classes
        self.encoder, self.input_shape = build_encoder(config.encoder, config.encoder_config, context.stream)
        make, dim = self._extractor_factory()
        self.model = ExpandableNet(make, dim, bias=config.classifier_bias, encoder=self.encoder).to(self.device)
        self.memory = ExemplarMemory(config.mem_size)
        self.history: list[dict[str, Any]] = []
        self._probe: torch.Tensor | None = None
        self._net: nn.Module = self.model  # the model, DDP-wrapped while a task trains under torchrun
        self.components = build_components(config, context)
        self._state: TrainingState | None = None  # what the components see while a task trains

    # -- the network -------------------------------------------------------------------------------------
    def _extractor_factory(self) -> tuple[Callable[[], nn.Module], int]:
        """How to build one extractor and its feature width: the ordinary network ``model`` names."""
        return extractor_factory(self.config.model, self.input_shape, width_mult=self.config.width_mult)

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
        x_eval, y_eval = materialise(whole.eval() if hasattr(whole, "eval") else whole)
        known = self.model.n_classes
        classes = sorted(int(c) for c in torch.unique(y_eval))
        if not classes or classes[0] < known or classes != list(range(known, known + len(classes))):
            raise UserError(
                f"{self._strategy_name()} needs a class-incremental stream whose experience {task} brings the new classes "
                f"{known}..{known + len(classes) - 1}; it holds classes {classes}"
            )
        self._add_task(len(classes))
        gen = torch.Generator().manual_seed(int(self.context.seed) * 1009 + task)

        parts: list[Dataset] = [dataset]
        if len(self.memory):  # each rank replays its shard of the memory, as it trains on its shard of the data
            mine = torch.as_tensor(distributed.shard_indices(len(self.memory), info), dtype=torch.long)
            parts.append(MemoryDataset(self.memory.x[mine], self.memory.y[mine]))
        loader = DataLoader(
            ConcatDataset(parts),
            batch_size=self.config.batch_size // info.world_size,  # batch_size is the global batch
            shuffle=True,
            generator=gen,
            drop_last=False,
            collate_fn=collate,
        )
        epochs = self.config.first_epochs if (task == 0 and self.config.first_epochs) else self.config.epochs
        if self.model.aux_classifier is not None and not self.config.aux_loss:
            self.model.aux_classifier.requires_grad_(False)  # unused: DDP needs every trainable parameter used
        self._net = distributed.wrap(self.model, info, self.device)
        optimizer = make_optimizer(self.model.parameters(), self.config)
        scaler = LossScaler(self.config.precision, self.device)
        log: dict[str, Any] = {"task": task, "classes": classes, "epochs": epochs, "loss": []}
        self._state = TrainingState(model=self.model, optimizer=optimizer, experience=task, known_classes=known)
        self.components.before_experience(self._state)
        for epoch in range(epochs):
            self._state.epoch = epoch
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
                self.components.after_backward(self._state)
                scaler.step(optimizer)
                self._after_optimizer_step(known)
                self.components.after_step(self._state)
                total += float(loss.detach()) * len(yb)
                n += len(yb)
            self.components.after_epoch(self._state)
            log["loss"].append(total / max(1, n))
            self.context.log_metric("train_loss", log["loss"][-1], epoch=epoch)
        self._net = self.model
        if self.config.bn_recalibrate:
            self._recalibrate_batch_norm(torch.cat([x_eval, self.memory.x]) if len(self.memory) else x_eval)
        self.model.eval()
        if task > 0 and self.config.finetune_epochs > 0:
            log["finetune"] = self._finetune_classifier(x_eval, y_eval, known, gen)
        self._update_memory(x_eval, y_eval)
        self._probe = x_eval[:256]
        self.history.append(log)
        self.components.after_experience(self._state)
        self._state = None

    def _strategy_name(self) -> str:
        """The name this learner's class is registered under (for messages)."""
        return next((s.name for s in list_plugins("strategy") if s.factory is type(self)), type(self).__name__)

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
            extractor(self.model.encode(x[i : i + self.config.batch_size].to(self.device)))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        extractor.eval()

    def _reset_heads(self) -> None:
        assert self.model.classifier is not None
        self.model.classifier.reset_parameters()
        if self.model.aux_classifier is not None:
            self.model.aux_classifier.reset_parameters()

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor, known: int) -> torch.Tensor:
        """Cross-entropy of the time-averaged logits plus the auxiliary loss (and ``_extra_loss``)."""
        out = self._net(xb)
        logits = out["logits"].mean(0)
        loss = tet_loss(out["logits"], yb) if self.config.loss == "tet" else F.cross_entropy(logits, yb)
        if self.config.aux_loss and "aux_logits" in out:
            aux_target = torch.where(yb < known, torch.zeros_like(yb), yb - known + 1)
            loss = loss + self.config.aux_weight * F.cross_entropy(out["aux_logits"].mean(0), aux_target)
        loss = loss + self._extra_loss(out, logits, yb, known)
        if self.components and self._state is not None:
            self._state.x, self._state.y, self._state.logits, self._state.step_logits = xb, yb, logits, out["logits"]
            extra = self.components.extra_loss(self._state)
            if extra is not None:
                loss = loss + extra
        return loss

    def _extra_loss(self, out: dict[str, torch.Tensor], logits: torch.Tensor, yb: torch.Tensor, known: int) -> torch.Tensor:
        """A loss term added to the representation stage's loss; none in DER."""
        return logits.new_zeros(())

    def _after_optimizer_step(self, known: int) -> None:
        """Called after every optimizer step of the representation stage; nothing in DER."""

    # -- classifier fine-tuning ------------------------------------------------------------------------
    @torch.no_grad()
    def _frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged concatenated features (the classifier is linear, so this equals per-step then mean)."""
        self.model.eval()
        with autocast(self.config.precision, self.device):
            out = [self.model.features(x[i : i + 256].to(self.device)).mean(0).float() for i in range(0, len(x), 256)]
        return torch.cat(out)

    def _finetune_logits(self, known: int) -> FinetuneLogits:
        """What the classifier stage trains on, for a task whose first new class is ``known``: in DER the
        classifier's logits as they are."""
        return FinetuneLogits()

    def _finetune_classifier(
        self, x_cur: torch.Tensor, y_cur: torch.Tensor, known: int, gen: torch.Generator
    ) -> dict[str, Any]:
        """Retrain the classifier alone on a class-balanced subset of current data + memory.

        Logs per epoch the gap between the mean target-class logit of new-class and of old-class samples.
        """
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
        optimizer = make_optimizer(clf.parameters(), finetune_optimizer(cfg))
        train_logits = self._finetune_logits(known)
        log: dict[str, Any] = {"samples": len(idx), "per_class": len(idx) // max(1, len(torch.unique(y_all))), "gap": []}
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
                loss = F.cross_entropy(train_logits(logits, epoch) / cfg.finetune_temperature, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            averages = None
            if counts[0] and counts[1]:
                averages = (sums[1] / counts[1], sums[0] / counts[0])
                log["gap"].append(averages[0] - averages[1])
            for key, value in train_logits.end_epoch(epoch, averages).items():
                log.setdefault(key, []).append(value)
        return log

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
        self.model = ExpandableNet(make, dim, bias=self.config.classifier_bias, encoder=self.encoder).to(self.device)
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
        if self.components:
            out["components"] = self.components.summary()
        return out

    def _cost(self, probe: torch.Tensor) -> dict[str, Any]:
        self.model.eval()
        ops = count_ops(self.model, lambda: self.model(probe), len(probe))
        return {"ops": ops.as_dict()}

    def clone_model(self) -> nn.Module:
        """A deep copy of the network (for inspection and tests)."""
        return copy.deepcopy(self.model)
