"""Shared pieces of the pre-trained-backbone strategies (SimE, ProP, Continual-CLIP): config, backbone
loading, class prototypes, and a small training loop.

``model=auto`` means the tiny open_clip configuration with random weights (offline, seconds on a CPU); any
open_clip name (``ViT-B-16``) or ``timm:<vit name>`` may be given, with ``pretrained`` an open_clip tag (needs
the network), a local checkpoint file, or empty for random weights. On a text stream (``stream.info["modality"]
== "text"``) ``model`` is a text model of ``adapters/lm/text_backbone.py`` and ``auto`` means MiniLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.lm.text_backbone import (
    DEFAULT_TEXT_MODEL,
    TEXT_TEMPLATES,
    TextBackbone,
    is_text_model,
    load_text_backbone,
)
from lifelong.adapters.nets.clip import AdapterSet, BottleneckAdapter, attach_adapters, freeze, load_backbone
from lifelong.adapters.nets.transforms import iterate_batches, stream_normalization
from lifelong.incremental.learner import Learner, RunContext, StrategyConfig, make_optimizer
from lifelong.platform.device import LossScaler, autocast
from lifelong.platform.errors import UserError

NEG = -1.0e4  # the logit of a class not seen yet: finite, so softmax and argmax stay well defined
#: CLIP's image prompt, the default of ``templates``; on a text model it becomes ``TEXT_TEMPLATES``
CLIP_TEMPLATE = "a bad photo of a {}."


def is_text_stream(stream: Any) -> bool:
    """True for streams whose inputs are texts as byte rows (``split-wordnet-glosses``)."""
    return stream.info.get("modality") == "text"


def resolve_model(model: str, stream: Any) -> str:
    """The backbone a run uses: ``auto`` is the tiny CLIP for images and MiniLM for text; a vision model on a text
    stream (or the reverse) is a ``UserError`` naming the allowed models."""
    text = is_text_stream(stream)
    if model in ("auto", ""):
        return DEFAULT_TEXT_MODEL if text else "tiny"
    if text and not is_text_model(model):
        raise UserError(f"model: {model!r} is a vision model but benchmark {stream.name} holds text; use model="
                        "minilm, smollm2-135m, tiny-bert or tiny-llama")
    if not text and is_text_model(model):
        raise UserError(f"model: {model!r} is a text model but benchmark {stream.name} holds images")
    return model


def attach_backbone_adapters(backbone: nn.Module, blocks: list[int], sites: list[str], dim: int, scale: float
                             ) -> AdapterSet:
    """Parallel bottleneck adapters on a vision tower (``nets/clip.attach_adapters``) or a text model (its
    ``hook_adapter``), one per (block, site), named ``block{b}_{site}`` either way."""
    if not isinstance(backbone, TextBackbone):
        return attach_adapters(backbone, blocks, sites, dim, scale)
    aset = AdapterSet()
    device = next(backbone.parameters()).device
    for b in blocks:
        for site in sites:
            adapter = BottleneckAdapter(backbone.width, dim, scale).to(device)
            aset.adapters[f"block{b}_{site}"] = adapter
            aset._handles.extend(backbone.hook_adapter(b, site, adapter))
    return aset


@dataclass
class PretrainedConfig(StrategyConfig):
    """Settings shared by the strategies on a frozen pre-trained backbone."""

    model: str = "auto"
    pretrained: str = ""
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 32


class PretrainedLearner(Learner):
    """A learner around a frozen backbone; subclasses add adapters, prompts or text classifiers."""

    config: PretrainedConfig

    def __init__(self, config: PretrainedConfig, context: RunContext) -> None:
        super().__init__(config, context)

        self.device = context.device
        self.n_classes = context.stream.n_classes
        self.is_text = is_text_stream(context.stream)
        name = resolve_model(config.model, context.stream)
        if self.is_text:
            if config.pretrained:
                raise UserError(f"pretrained: the text model {name} loads its bundled weights; leave pretrained empty")
            self.loaded: Any = load_text_backbone(name, seed=context.seed,
                                                  max_tokens=int(context.stream.info.get("max_tokens", 64)))
        else:
            self.loaded = load_backbone(name, config.pretrained, seed=context.seed)
        freeze(self.loaded.visual)
        if self.loaded.text is not None:
            freeze(self.loaded.text)

        fit = self.loaded.image_fit
        if not self.is_text:
            fit.input_mean, fit.input_std = (  # buffers of the fit: moved to the device with it just below
                None if v is None else torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                for v in stream_normalization(context.stream.info)
            )
        self.fit = fit.to(self.device)
        self.backbone = self.loaded.visual.to(self.device)
        if self.loaded.text is not None:
            self.loaded.text.to(self.device)
        self.backbone.eval()
        # kept on the CPU on purpose: a small mask that checkpoints as it is; callers move it to where they index
        self.seen = torch.zeros(self.n_classes, dtype=torch.bool)
        self.train_seconds: list[float] = []
        # one scaler for the whole run: an fp16 loss scale found on one experience carries over to the next
        self.scaler = LossScaler(config.precision, self.device)

    # -- data ---------------------------------------------------------------------------------------------
    def experience_classes(self, experience: Any) -> list[int]:
        classes = getattr(experience, "classes_in_this_experience", None)
        if classes is None:
            classes = self.context.stream.classes_per_experience[experience.current_experience]
        return sorted(int(c) for c in classes)

    def batches(self, experience: Any, *, shuffle: bool, epoch: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        seed = self.context.seed * 100_003 + int(getattr(experience, "current_experience", 0)) * 101 + epoch
        bs = self.config.batch_size if shuffle else self.config.eval_batch_size
        for x, y in iterate_batches(experience.dataset, bs, shuffle=shuffle, seed=seed):
            yield x.to(self.device), y.to(self.device)

    def class_names(self) -> list[str]:
        names = self.context.stream.names_in_order()
        if names is None:
            raise UserError(f"benchmark {self.context.stream.name} has no class names; text prompts need them")
        return names

    def templates(self, given: list[str]) -> list[str]:
        """The class-name prompts: ``given``, except that CLIP's photo prompt becomes ``TEXT_TEMPLATES`` on text."""
        if self.is_text and list(given) == [CLIP_TEMPLATE]:
            return list(TEXT_TEMPLATES)
        return list(given)

    def autocast(self) -> Any:
        """The configured precision's autocast on this learner's device (a no-op for fp32)."""
        return autocast(self.config.precision, self.device)

    # -- training -----------------------------------------------------------------------------------------
    def fit_loop(
        self,
        experience: Any,
        params: list[nn.Parameter],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> float:
        """Plain mini-batch training of ``params`` on one experience; returns the last epoch's mean loss.

        Forward and loss run under the configured precision's autocast; ``params`` stay float32 and fp16
        gradients go through a GradScaler, so small ones do not underflow.
        """
        opt = make_optimizer(params, self.config)
        scaler = self.scaler
        mean = 0.0
        for epoch in range(self.config.epochs):
            total, n = 0.0, 0
            for x, y in self.batches(experience, shuffle=True, epoch=epoch):
                with self.autocast():
                    loss = loss_fn(x, y).float()
                opt.zero_grad(set_to_none=True)
                scaler.backward(loss)
                scaler.step(opt)
                total += loss.detach().item() * len(y)
                n += len(y)
            mean = total / max(n, 1)
        return mean


class CosineHead(nn.Module):
    """``scale * cos(f, w_c)`` over a task's classes, its weights started from that task's prototypes."""

    def __init__(self, init: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(init.detach().clone(), dim=-1))
        self.scale = scale

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(feats, dim=-1) @ F.normalize(self.weight, dim=-1).T


def local_labels(y: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Map global class ids to 0..len(classes)-1 (the task head's order)."""
    lookup = torch.full((max(classes) + 1,), -1, dtype=torch.long, device=y.device)
    lookup[torch.tensor(classes, device=y.device)] = torch.arange(len(classes), device=y.device)
    out = lookup[y]
    if (out < 0).any():
        raise RuntimeError("a training sample's label is not among its experience's classes")
    return out


@torch.no_grad()
def class_means(features: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: list[int], dim: int) -> torch.Tensor:
    """Prototypes: for each class, the mean of its L2-normalised features, normalised again ``(len, dim)``.

    Summed in float32 on the features' device (reduced-precision features are cast up first), so nothing
    leaves the accelerator per batch; an empty ``features`` gives the "no training samples" error.
    """
    sums: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    for f, y in features:
        f = F.normalize(f.float(), dim=-1)
        if sums is None or counts is None:
            sums = torch.zeros(len(classes), dim, device=f.device)
            counts = torch.zeros(len(classes), device=f.device)
        rows = local_labels(y.to(f.device), classes)
        sums.index_add_(0, rows, f)
        counts.index_add_(0, rows, torch.ones(len(rows), device=f.device))
    if sums is None or counts is None or (counts == 0).any():
        empty = torch.ones(len(classes), dtype=torch.bool) if counts is None else (counts == 0).cpu()
        missing = [classes[i] for i in torch.nonzero(empty).flatten().tolist()]
        raise RuntimeError(f"no training samples for classes {missing}")
    return F.normalize(sums / counts.unsqueeze(1), dim=-1)


class PrototypeIndex:
    """Nearest-prototype search by cosine similarity with faiss (``IndexFlatIP`` on normalised vectors)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index: Any = None
        self._ids: torch.Tensor | None = None

    def build(self, prototypes: torch.Tensor, ids: torch.Tensor) -> None:
        import faiss

        index = faiss.IndexFlatIP(self.dim)
        index.add(F.normalize(prototypes.float(), dim=-1).cpu().numpy().astype("float32"))
        self._index, self._ids = index, ids.cpu().long()

    def scores(self, queries: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Cosine similarity of each query to every stored prototype, as float32 logits over ``n_classes`` (NEG
        elsewhere), on the queries' device; the search itself runs in faiss on the CPU."""
        out = torch.full((queries.shape[0], n_classes), NEG, device="cpu")  # where faiss answers
        if self._index is not None and self._ids is not None and len(self._ids) > 0:
            q = F.normalize(queries.float(), dim=-1).cpu().numpy().astype("float32")
            sims, rows = self._index.search(q, len(self._ids))
            cls = self._ids[torch.from_numpy(rows).long()]
            out.scatter_(1, cls, torch.from_numpy(sims).float())
        return out.to(queries.device)
