"""``l2p``: Learning to Prompt (Wang et al., CVPR 2022) through Avalanche's ``LearningToPrompt``, offline and on
label-only streams.

Avalanche 0.6.0's strategy is used for what it does well (its training loop, the prompt-pool model
``ViTWithPrompt``, the key-query surrogate loss ``- sim_coefficient * reduce_sim``, the mask of the current
classes' logits, the fresh Adam optimiser per experience), with three measured defects worked around here:

- its constructor only builds the 224-pixel ViTs of ``avalanche.models.vit`` with timm weights from the
  network, and that factory fails on timm 1.x (``'PretrainedCfg' object is not subscriptable``); we construct
  ``ViTWithPrompt`` ourselves: the tiny default (32x32 images, patch 8, width 64, 4 blocks, random weights) or
  a named ViT size with weights from a local timm checkpoint (``pretrained=PATH``);
- its head is hard-coded ``Linear(768, n)``; we size it to the model's width;
- its ``forward`` reads the mini-batch task label, which a label-only stream does not have; ours passes
  ``task_id=-1`` (task labels are only used by the prompt mask, which L2P's class-incremental setting turns off);
  and its logit mask reads ``experience.classes_in_this_experience``, which experiences built with
  ``benchmark_from_datasets`` lack; ours takes the classes from the stream.

Departure: at test time the logits of classes not trained yet are masked out (the usual class-incremental
evaluation over the classes seen so far); Avalanche leaves the untrained head rows in the competition.

On a text stream (``split-wordnet-glosses``) with a text model (``model=minilm``, the default there,
``smollm2-135m``; ``adapters/lm/text_backbone.py``) Avalanche's ViT cannot be used; the same method is built
from Avalanche's prompt pool (``avalanche.models.prompt.Prompt``: keys, top-k query-key selection, the
``reduce_sim`` surrogate) around the frozen text model: the query is the frozen model's pooled embedding of
the text, the selected ``top_k * prompt_length`` prompt tokens go after [CLS] (before the text on a decoder),
and the linear head reads the mean of the text tokens' final states. Departure: L2P's head reads the prompt
tokens' outputs, which on a causal decoder cannot see the text. The loop is Avalanche's: a fresh Adam per
experience, the current classes' logits only in training, loss = cross-entropy - ``sim_coefficient`` x
``reduce_sim``. The pool's values are drawn U(-1, 1) times the spread of the model's token embeddings.

When loading a pre-trained checkpoint the prompt positions of the position embedding (L2P puts
``prompt_length * top_k`` prompt tokens between the class token and the patches) start as copies of the class
token's position embedding; the class and patch positions are loaded as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lifelong.adapters.lm.text_backbone import TextBackbone, is_text_model, load_text_backbone
from lifelong.adapters.nets.clip import read_state_dict
from lifelong.adapters.nets.transforms import iterate_batches
from lifelong.adapters.nets.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageFit, stream_normalization
from lifelong.incremental.learner import Learner, RunContext, StrategyConfig, make_optimizer
from lifelong.platform.device import LossScaler, autocast
from lifelong.platform.errors import UserError
from lifelong.platform.registry import Capabilities, register
from lifelong.strategies._avalanche import silent_evaluator
from lifelong.strategies._pretrained import is_text_stream, local_labels, resolve_model

#: ViT sizes accepted as ``model`` (the ones Avalanche's L2P knows, plus the tiny offline default).
VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2},
    "vit_tiny_patch16_224": {"img_size": 224, "patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small_patch32_224": {"img_size": 224, "patch_size": 32, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base_patch16_224": {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_base_patch32_224": {"img_size": 224, "patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large_patch16_224": {"img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
}


@dataclass
class L2PConfig(StrategyConfig):
    """L2P's settings (defaults of the paper and Avalanche, sized down for the tiny model)."""

    model: str = "auto"
    pretrained: str = ""
    epochs: int = 3
    batch_size: int = 32
    # Avalanche's LearningToPrompt trains with a fresh Adam(lr, betas 0.9/0.999) at every experience, whatever
    # optimizer it was built with: the default says so
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 0.03
    pool_size: int = 10
    prompt_length: int = 4
    top_k: int = 3
    sim_coefficient: float = 0.1
    use_mask: bool = True

    def validate(self) -> None:
        super().validate()
        name = "tiny" if self.model in ("auto", "") else self.model
        if name not in VIT_SIZES and not is_text_model(name):
            raise ValueError(f"model: {self.model!r} is not allowed; allowed values: auto, {', '.join(VIT_SIZES)}, "
                             "and on text streams minilm, smollm2-135m, tiny-bert, tiny-llama")
        if self.top_k > self.pool_size:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed pool_size ({self.pool_size})")
        for key in ("pool_size", "prompt_length", "top_k"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")


class L2PModel(nn.Module):
    """The prompted ViT that trains and the frozen query ViT that picks the prompts (both checkpointed)."""

    def __init__(self, vit: nn.Module, query: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.query = query


def _load_timm_weights(model: nn.Module, path: str, n_prompt_tokens: int) -> None:

    state = read_state_dict(path)
    own = model.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
        if pos.shape[1] + n_prompt_tokens != own["pos_embed"].shape[1]:
            raise UserError(f"pretrained: pos_embed of {path} has {pos.shape[1]} positions; the model needs "
                            f"{own['pos_embed'].shape[1] - n_prompt_tokens} (wrong model size?)")
        prompt_pos = pos[:, :1].expand(-1, n_prompt_tokens, -1)
        state["pos_embed"] = torch.cat([pos[:, :1], prompt_pos, pos[:, 1:]], dim=1)
    skip = ("head.", "prompt.")
    wrong = [k for k, v in state.items() if k in own and not k.startswith(skip) and own[k].shape != v.shape]
    if wrong:
        raise UserError(f"pretrained: {path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the model "
                        f"expects {tuple(own[wrong[0]].shape)}")
    backbone_keys = [k for k in own if not k.startswith(skip)]
    missing = [k for k in backbone_keys if k not in state]
    if missing:
        raise UserError(f"pretrained: {path} lacks {len(missing)} backbone weights ({', '.join(missing[:3])})")
    model.load_state_dict({k: state[k] for k in backbone_keys}, strict=False)


def _build_strategy(config: L2PConfig, context: RunContext) -> Any:
    """Avalanche's ``LearningToPrompt`` with our model, head and label-only ``forward``."""
    from avalanche.models.timm_vit import ViTWithPrompt
    from avalanche.training import LearningToPrompt
    from avalanche.training.templates import SupervisedTemplate

    class _L2P(LearningToPrompt):
        def __init__(self, model: nn.Module, query: nn.Module, fit: nn.Module) -> None:
            # LearningToPrompt.__init__ would build a 224-px timm model from the network; set its fields instead.
            self.num_classes = context.stream.n_classes
            self.lr = config.lr
            self.sim_coefficient = config.sim_coefficient
            # LearningToPrompt replaces this by a fresh Adam(lr) at every experience (see L2PConfig.optimizer)
            optimizer = make_optimizer(model.parameters(), config)
            SupervisedTemplate.__init__(
                self, model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                train_mb_size=config.batch_size, train_epochs=config.epochs,
                eval_mb_size=config.eval_batch_size, device=context.device,
                evaluator=silent_evaluator(), eval_every=-1,
            )
            self._criterion = nn.CrossEntropyLoss()
            self.use_cls_features = True
            self.train_prompt_mask = False
            self.use_mask = config.use_mask
            self.use_vit = True
            self.original_vit = query
            self.fit = fit
            # mixed precision: forward and loss under autocast, backward and step through the (fp16) scaler
            self.scaler = LossScaler(config.precision, context.device)

        def _unpack_minibatch(self) -> None:
            super()._unpack_minibatch()
            self.mbatch[0] = self.fit(self.mbatch[0])  # any stream's images -> the ViT's size and channels

        def forward(self) -> torch.Tensor:
            # Same as LearningToPrompt.forward, without reading a task label the stream may not have, under the
            # configured precision; logits and the key-query term come back float32 for the loss.
            with autocast(config.precision, context.device):
                with torch.no_grad():
                    cls_features = self.original_vit(self.mb_x)["pre_logits"]
                self.res = self.model(x=self.mb_x, task_id=-1, cls_features=cls_features, train=False)
            self.res["reduce_sim"] = self.res["reduce_sim"].float()
            logits = self.res["logits"].float()
            if self.use_mask and self.is_training:
                exp = self.experience
                classes = getattr(exp, "classes_in_this_experience", None)
                if classes is None:  # benchmark_from_datasets experiences do not carry it
                    classes = context.stream.classes_per_experience[exp.current_experience]
                seen = torch.as_tensor(list(classes), device=logits.device)
                keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
                keep[seen] = True
                logits = logits.masked_fill(~keep, float("-inf"))
            return logits

        def backward(self) -> None:
            self.scaler.backward(self.loss, retain_graph=self.retain_graph)

        def optimizer_step(self) -> None:
            self.scaler.step(self.optimizer)

    name = "tiny" if config.model in ("auto", "") else config.model
    dims = VIT_SIZES[name]
    n_classes = context.stream.n_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed)
        vit = ViTWithPrompt(
            **dims, num_classes=n_classes, prompt_length=config.prompt_length, pool_size=config.pool_size,
            top_k=config.top_k, prompt_pool=True, prompt_key=True, embedding_key="cls", prompt_init="uniform",
            batchwise_prompt=False, head_type="prompt", use_prompt_mask=False,
        )
        query = ViTWithPrompt(**dims, num_classes=n_classes)
        query.load_state_dict({k: v for k, v in vit.state_dict().items() if k in query.state_dict()
                               and query.state_dict()[k].shape == v.shape}, strict=False)
    if config.pretrained:
        from pathlib import Path

        if not Path(config.pretrained).is_file():
            raise UserError(f"pretrained: checkpoint file {config.pretrained} does not exist (l2p loads local timm "
                            "ViT weights only)")
        _load_timm_weights(vit, config.pretrained, config.prompt_length * config.top_k)
        _load_timm_weights(query, config.pretrained, 0)
    query.reset_classifier(0)
    for n, p in vit.named_parameters():
        if n.startswith(("blocks", "patch_embed", "cls_token", "norm", "pos_embed")):
            p.requires_grad = False
    vit.head = nn.Linear(dims["embed_dim"], n_classes)
    for p in query.parameters():
        p.requires_grad = False
    vit.to(context.device)
    query.to(context.device).eval()
    in_mean, in_std = stream_normalization(context.stream.info)
    fit = ImageFit(dims["img_size"], 3, IMAGENET_MEAN, IMAGENET_STD, in_mean, in_std).to(context.device)
    return _L2P(model=vit, query=query, fit=fit), dims


class TextL2PModel(nn.Module):
    """L2P on a text model: the frozen model (also the query encoder), the prompt pool with keys, the head."""

    def __init__(self, backbone: TextBackbone, pool: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.head = nn.Linear(backbone.out_dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, reduce_sim): prompts chosen by the frozen model's pooled query, inserted, head on the pool."""
        b = self.backbone
        ids, mask = b.tokenize(x)
        emb = b.embed(ids)
        with torch.no_grad():
            query = b.pool(b.hidden(emb, mask), mask)
        out = self.pool(emb, cls_features=query)
        n = int(out["total_prompt_len"])
        e, m = b.insert_prompts(emb, mask, out["prompted_embedding"][:, :n])
        return self.head(b.pool(b.hidden(e, m), m, n)), out["reduce_sim"]


def _build_text_model(config: L2PConfig, context: RunContext) -> TextL2PModel:
    from avalanche.models.prompt import Prompt

    name = resolve_model(config.model, context.stream)
    loaded = load_text_backbone(name, seed=context.seed, max_tokens=int(context.stream.info.get("max_tokens", 64)))
    backbone = loaded.visual
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed)
        pool = Prompt(length=config.prompt_length, embed_dim=backbone.width, embedding_key="cls",
                      prompt_init="uniform", prompt_pool=True, prompt_key=True, pool_size=config.pool_size,
                      top_k=config.top_k, batchwise_prompt=False, prompt_key_init="uniform")
        pool.prompt.data.mul_(backbone.prompt_init_gain)
        model = TextL2PModel(backbone, pool, context.stream.n_classes)
    return model.to(context.device)


@register(
    "strategy",
    "l2p",
    config=L2PConfig,
    summary="L2P via Avalanche's LearningToPrompt: prompt pool with key-query matching, frozen ViT (offline)",
    capabilities=Capabilities(),
)
class L2P(Learner):
    """Avalanche's L2P strategy wrapped as a platform learner (on text: Avalanche's prompt pool, our loop)."""

    config: L2PConfig

    def __init__(self, config: L2PConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.seen = torch.zeros(context.stream.n_classes, dtype=torch.bool)
        self.text = is_text_stream(context.stream)
        if self.text:
            self.model = _build_text_model(config, context)
            self.scaler = LossScaler(config.precision, context.device)
            return
        resolve_model(config.model, context.stream)  # a text model on an image stream: one clear line
        self.strategy, _ = _build_strategy(config, context)
        self.model = L2PModel(self.strategy.model, self.strategy.original_vit)
        self.fit = self.strategy.fit

    def train_experience(self, experience: Any) -> None:
        if self.text:
            self._train_text(experience)
        else:
            self.strategy.train(experience)
        self.seen[self.context.stream.classes_per_experience[experience.current_experience]] = True

    def _train_text(self, experience: Any) -> None:
        """Avalanche's L2P loop on the text model: fresh Adam, current-class logits, CE - c * reduce_sim."""
        c, device = self.config, self.context.device
        classes = sorted(int(k) for k in self.context.stream.classes_per_experience[experience.current_experience])
        params = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        opt = torch.optim.Adam(params, lr=c.lr, betas=(0.9, 0.999))
        cols = torch.tensor(classes, device=device)
        self.model.backbone.eval()
        for epoch in range(c.epochs):
            seed = self.context.seed * 100_003 + int(experience.current_experience) * 101 + epoch
            for x, y in iterate_batches(experience.dataset, c.batch_size, shuffle=True, seed=seed):
                x, y = x.to(device), y.to(device)
                with autocast(c.precision, device):
                    logits, reduce_sim = self.model(x)
                    logits = logits.float()[:, cols] if c.use_mask else logits.float()
                    target = local_labels(y, classes) if c.use_mask else y
                    loss = nn.functional.cross_entropy(logits, target) - c.sim_coefficient * reduce_sim.float()
                opt.zero_grad(set_to_none=True)
                self.scaler.backward(loss)
                self.scaler.step(opt)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits over all classes (untrained ones masked); the ViTs run under the configured precision."""
        self.model.eval()
        with torch.no_grad():
            with autocast(self.config.precision, self.context.device):
                if self.text:
                    logits, _ = self.model(x.to(self.context.device))
                else:
                    x = self.fit(x.to(self.context.device))
                    cls_features = self.model.query(x)["pre_logits"]
                    logits = self.model.vit(x=x, task_id=-1, cls_features=cls_features, train=False)["logits"]
            logits = logits.float()
            return logits.masked_fill(~self.seen.to(logits.device), -1.0e4)

    def extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "seen" in state:
            self.seen = state["seen"].clone().bool().cpu()

    def optimizer_state(self) -> dict[str, Any] | None:
        return None  # L2P starts a fresh Adam at every experience

    def summary(self) -> dict[str, Any]:
        if self.text:
            trainable = sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith("backbone."))
            return {"trainable_parameters": trainable, "backbone": self.config.model,
                    "backbone_parameters": sum(p.numel() for p in self.model.backbone.parameters())}
        trainable = sum(p.numel() for p in self.model.vit.parameters() if p.requires_grad)
        return {"trainable_parameters": trainable, "pretrained": self.config.pretrained or "random"}
