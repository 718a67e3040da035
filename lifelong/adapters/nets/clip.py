"""open_clip and timm vision transformers as frozen feature extractors, with parallel bottleneck adapters.

What this module gives the pre-trained-backbone strategies (SimE, ProP, Continual-CLIP):

- :func:`load_backbone` builds any open_clip model by name (``ViT-B-16``, ``ViT-L-14``, ...), the tiny test
  configuration ``tiny`` (4 blocks, width 64, 32x32 images, random weights), or a timm ViT (``timm:NAME``), with
  weights from an open_clip pretrained tag (needs the network), a local checkpoint file, or none (random).
- :class:`VisionBackbone` exposes one interface over open_clip's and timm's ViTs: ``embed`` (patch + class +
  position tokens), ``blocks``, ``pool``; ``forward(x, prompts=...)`` inserts prompt tokens after the class
  token (for ProP); ``forward_tokens`` runs the blocks on ready-made token sequences (for batching many prompts).
- :class:`TextEncoder` encodes class-name prompts with the CLIP text tower (Continual-CLIP, SimE's fusion).
- :class:`BottleneckAdapter` and :func:`attach_adapters`: AdaptFormer-style parallel adapters
  (down-projection, ReLU, zero-initialised up-projection, scale) beside a block's MLP ("mlp") and/or its
  attention ("attn"), attached with forward hooks so the backbone's own code and weights are untouched. With
  the zero up-projection the adapted model is exactly the original one until the adapters train.

Gap filled here: AdaptFormer feeds its adapter the block input before the layer norm; with hooks the adapter
sees the site's own input (the normalised hidden state), as in the parallel adapters of He et al. (2022). The
tests check the identity at initialisation and that only adapter parameters change in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.nets.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageFit
from lifelong.platform.atomic import atomic_write_with
from lifelong.platform.config import ConfigError
from lifelong.platform.errors import UserError

#: The tiny configuration used by defaults and tests: random weights, a few layers, narrow, 32x32 images.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_NAMES = ("tiny", "tiny-clip")
SITES = ("mlp", "attn")


@dataclass
class LoadedBackbone:
    """A vision backbone plus what is needed to feed it and, for CLIP models, its text tower."""

    name: str
    visual: "VisionBackbone"
    text: "TextEncoder | None"
    image_fit: ImageFit
    weights: str  # "random", "file:PATH" or "tag:TAG"

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.visual.parameters() if p.requires_grad)


def _is_file_reference(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.startswith(".") or Path(pretrained).suffix in (
        ".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


def load_backbone(name: str = "tiny", pretrained: str = "", *, seed: int = 0) -> LoadedBackbone:
    """Build the backbone ``name`` with weights from ``pretrained`` (empty/'none': random; a path; a tag).

    Random weights are drawn under ``seed`` so two runs with the same seed start from the same network.
    Failures (unknown model, missing file, a tag without network) raise a ``UserError`` naming the problem.
    """
    pretrained = (pretrained or "").strip()
    if pretrained.lower() in ("none", "random"):
        pretrained = ""
    if pretrained and _is_file_reference(pretrained) and not Path(pretrained).is_file():
        raise UserError(f"pretrained: checkpoint file {pretrained} does not exist")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name.startswith("timm:"):
            return _load_timm(name, pretrained)
        return _load_open_clip(name, pretrained)


def _load_open_clip(name: str, pretrained: str) -> LoadedBackbone:
    import open_clip

    if name in TINY_NAMES:
        if pretrained and not _is_file_reference(pretrained):
            raise UserError(f"pretrained: the tiny model has no published weights; give a file path, not {pretrained!r}")
        model = open_clip.CLIP(**TINY_CLIP_CONFIG)
        context_length = TINY_CLIP_CONFIG["text_cfg"]["context_length"]
        weights = "random"
        if pretrained:
            load_weights(model, pretrained)
            weights = f"file:{pretrained}"
        tokenizer: Callable = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    else:
        if name not in open_clip.list_models():
            known = ", ".join(list(TINY_NAMES) + [m for m in open_clip.list_models() if m.startswith("ViT")][:12])
            raise UserError(f"model: unknown open_clip model {name!r}; e.g. {known}, ... or timm:<vit name>")
        if pretrained and not _is_file_reference(pretrained):
            try:
                model = open_clip.create_model(name, pretrained=pretrained)
            except Exception as exc:  # no network, unknown tag, broken download
                tags = [t for m, t in open_clip.list_pretrained() if m == name]
                raise UserError(
                    f"pretrained: could not load open_clip weights {name}/{pretrained} ({type(exc).__name__}: {exc}); "
                    f"known tags for {name}: {', '.join(tags) or 'none'}; offline, give a local file with pretrained=PATH"
                ) from None
            weights = f"tag:{pretrained}"
        else:
            model = open_clip.create_model(name, pretrained=None)
            weights = "random"
            if pretrained:
                load_weights(model, pretrained)
                weights = f"file:{pretrained}"
        try:
            tokenizer = open_clip.get_tokenizer(name)
        except Exception:  # tokenizers that live on the hub; the vision side still works
            tokenizer = None  # type: ignore[assignment]
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or CLIP_MEAN
    std = getattr(model.visual, "image_std", None) or CLIP_STD
    text = TextEncoder(model, tokenizer) if tokenizer is not None else None
    return LoadedBackbone(name, VisionBackbone(model.visual), text, ImageFit(int(size), 3, mean, std), weights)


def _load_timm(name: str, pretrained: str) -> LoadedBackbone:
    import timm

    arch = name[len("timm:"):]
    if pretrained and not _is_file_reference(pretrained):
        raise UserError("pretrained: timm backbones load local files only here (pretrained=PATH)")
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    except Exception as exc:
        raise UserError(f"model: cannot build timm model {arch!r}: {exc}") from None
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise UserError(f"model: timm model {arch!r} is not a vision transformer (no blocks/patch_embed)")
    weights = "random"
    if pretrained:
        load_weights(model, pretrained, strict=False)
        weights = f"file:{pretrained}"
    model.eval()
    size = model.patch_embed.img_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return LoadedBackbone(name, VisionBackbone(model), None, ImageFit(int(size), 3, IMAGENET_MEAN, IMAGENET_STD), weights)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch file read with ``weights_only=True``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"pretrained: cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"pretrained: {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load a local checkpoint into ``model``; a mismatch names the first missing/unexpected/misshaped keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].shape != own["logit_scale"].shape:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    bad_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shape:
        k = bad_shape[0]
        raise UserError(
            f"pretrained: {path} does not fit this model: {k} has shape {tuple(state[k].shape)}, "
            f"the model expects {tuple(own[k].shape)} (wrong model name?)"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise UserError(
            f"pretrained: {path} does not fit this model: {len(missing)} missing keys "
            f"({', '.join(missing[:3])}) and {len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s state dict as safetensors (atomically), the format ``load_weights`` reads back."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, str(tmp)))


class VisionBackbone(nn.Module):
    """One interface over open_clip's ``VisionTransformer`` and timm's ``VisionTransformer``.

    ``forward(x)`` equals the wrapped model's own image embedding (checked in the tests); ``prompts`` of shape
    ``(P, D)`` or ``(B, P, D)`` are inserted right after the class token and dropped again before pooling.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.kind = "open_clip" if hasattr(visual, "transformer") and hasattr(visual, "class_embedding") else "timm"
        if self.kind == "timm" and not hasattr(visual, "blocks"):
            raise ConfigError("model: the backbone is neither an open_clip nor a timm vision transformer")

    @property
    def blocks(self) -> nn.ModuleList | nn.Sequential:
        return self.visual.transformer.resblocks if self.kind == "open_clip" else self.visual.blocks

    @property
    def width(self) -> int:
        return int(self.visual.transformer.width if self.kind == "open_clip" else self.visual.embed_dim)

    @property
    def out_dim(self) -> int:
        if self.kind == "open_clip":
            proj = self.visual.proj
            return int(proj.shape[1]) if proj is not None else self.width
        return int(self.visual.num_features)

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches (class token, timm's register tokens); prompts go after them."""
        return 1 if self.kind == "open_clip" else int(getattr(self.visual, "num_prefix_tokens", 1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token sequence ``(B, 1 + patches, D)`` before the first block (position embedding and pre-norm done)."""
        v = self.visual
        if self.kind == "open_clip":
            if hasattr(v, "_embeds"):  # open_clip >= 2.30
                return v._embeds(x)
            x = v.conv1(x)
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
            return v.ln_pre(v.patch_dropout(x))
        x = v.patch_embed(x)
        x = v._pos_embed(x)
        x = v.patch_drop(x)
        return v.norm_pre(x)

    def insert_prompts(self, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Put ``prompts`` ((P, D) shared or (B, P, D) per sample) between the prefix tokens and the patches."""
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        k = self.n_prefix
        return torch.cat([tokens[:, :k], prompts.to(tokens.dtype), tokens[:, k:]], dim=1)

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def pool(self, tokens: torch.Tensor, n_prompts: int = 0) -> torch.Tensor:
        """The image embedding from the final tokens; prompt tokens are removed first."""
        if n_prompts:
            k = self.n_prefix
            tokens = torch.cat([tokens[:, :k], tokens[:, k + n_prompts:]], dim=1)
        v = self.visual
        if self.kind == "open_clip":
            if hasattr(v, "_pool"):  # open_clip >= 2.30
                pooled, _ = v._pool(tokens)
            else:
                pooled, _ = v._global_pool(v.ln_post(tokens))
            return pooled @ v.proj if v.proj is not None else pooled
        tokens = v.norm(tokens)
        return v.forward_head(tokens, pre_logits=True)

    def forward_tokens(self, tokens: torch.Tensor, n_prompts: int = 0) -> torch.Tensor:
        return self.pool(self.run_blocks(tokens), n_prompts)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.embed(x)
        n = 0
        if prompts is not None:
            tokens = self.insert_prompts(tokens, prompts)
            n = prompts.shape[-2]
        return self.forward_tokens(tokens, n)


class TextEncoder(nn.Module):
    """CLIP's text tower with its tokenizer: class names in, L2-normalised text embeddings out."""

    def __init__(self, clip_model: nn.Module, tokenizer: Callable) -> None:
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        """Where the text tower's weights are (the tokens must go there)."""
        return next(self.clip.parameters()).device

    @torch.no_grad()
    def encode(self, texts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Float32 normalised embeddings of ``texts``; tokens go to ``device`` (default: the tower's device)."""
        tokens = self.tokenizer(list(texts)).to(self.device if device is None else device)
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def class_embeddings(
        self, names: Sequence[str], templates: Sequence[str], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """One embedding per class name: the normalised mean over the templates (CLIP's prompt ensembling)."""
        out = []
        for name in names:
            emb = self.encode([t.format(name) for t in templates], device)
            out.append(F.normalize(emb.mean(0), dim=-1))
        return torch.stack(out)


class BottleneckAdapter(nn.Module):
    """``scale * up(relu(down(h)))`` with ``up`` zero-initialised, so it adds exactly zero before training."""

    def __init__(self, dim: int, bottleneck: int, scale: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.relu(self.down(h)))


def _site_module(block: nn.Module, site: str) -> nn.Module:
    module = getattr(block, site, None)
    if module is None:
        raise ConfigError(f"adapter_sites: block {type(block).__name__} has no {site!r} module")
    return module


def _hook_for(adapter: BottleneckAdapter) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        h = args[0] if args else next(iter(kwargs.values()))  # open_clip MHA: (q, k, v); timm/MLP: (x,)
        if isinstance(output, tuple):  # nn.MultiheadAttention returns (out, weights)
            return (output[0] + adapter(h),) + tuple(output[1:])
        return output + adapter(h)

    return hook


class AdapterSet(nn.Module):
    """The adapters attached to one backbone; ``detach()`` removes their hooks, ``enabled`` switches them off."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self._handles: list[Any] = []

    def __len__(self) -> int:
        return len(self.adapters)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.adapters.parameters())

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def resolve_blocks(spec: Sequence[int], n_blocks: int) -> list[int]:
    """Block indices from a config list; empty means every block, negative indices count from the end."""
    if not spec:
        return list(range(n_blocks))
    out = []
    for i in spec:
        j = i + n_blocks if i < 0 else i
        if not 0 <= j < n_blocks:
            raise ConfigError(f"adapter_blocks: block {i} does not exist; the backbone has blocks 0..{n_blocks - 1}")
        if j not in out:
            out.append(j)
    return sorted(out)


def attach_adapters(
    backbone: VisionBackbone,
    blocks: Iterable[int],
    sites: Sequence[str] = ("mlp",),
    bottleneck: int = 64,
    scale: float = 0.1,
) -> AdapterSet:
    """Attach one parallel adapter per (block, site); sites are "mlp" (AdaptMLP) and "attn" (AdaptAtten)."""
    for site in sites:
        if site not in SITES:
            raise ConfigError(f"adapter_sites: {site!r} is not allowed; allowed values: {', '.join(SITES)}")
    if bottleneck < 1:
        raise ConfigError(f"adapter_dim must be at least 1, got {bottleneck}")
    aset = AdapterSet()
    all_blocks = list(backbone.blocks)
    device = next(backbone.parameters()).device  # drawn on the CPU (same values on every device), used beside it
    for b in blocks:
        for site in sites:
            adapter = BottleneckAdapter(backbone.width, bottleneck, scale).to(device)
            aset.adapters[f"block{b}_{site}"] = adapter
            handle = _site_module(all_blocks[b], site).register_forward_hook(_hook_for(adapter), with_kwargs=True)
            aset._handles.append(handle)
    return aset


def freeze(module: nn.Module) -> None:
    """Turn gradients off for every parameter of ``module`` (the frozen pre-trained backbone)."""
    for p in module.parameters():
        p.requires_grad_(False)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
