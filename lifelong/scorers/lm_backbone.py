"""The language-model backbone of a reward model (``backbone=lm`` of ``srm`` and ``scalar-rm``), and the LM helpers
the generative scorers share (``grm``, the ``sbm-*`` branches).

Paper: Liu et al., "Structural Reward Model", arXiv 2509.25361. There the reward model is a language model that
reads the prompt, the response and the side-branch texts and gives one scalar, fine-tuned with the Bradley-Terry
loss; the paper compares it with a scalar RM on the same backbone (no side-branch texts) and a generative RM.

What this module builds: the causal LM (default the embedded SmolLM2-135M, ``lifelong.adapters.lm.model_loading``) reads the
joined text ``Prompt: .. / Response: .. / branch texts`` (right-truncated to ``max_length`` tokens, an end-of-text
token appended); a linear head on the final hidden state of the last token gives the text term of the reward;
LoRA adapters (peft) on the decoder layers and the head are trained with Bradley-Terry, as in the paper.

Where it departs, for cost on a CPU (documented in docs/reward.md):
- LoRA sits only on the top ``lora_layers`` decoder layers (default 4 of SmolLM2's 30); the layers below stay
  frozen. Their output for a text does not depend on anything trained, so it is computed once per text (the
  "split state") and memoised in this process (``SPLIT_MEMO_BYTES``, least recently used first out); a training
  step then runs only the top layers, forward and backward. The top layers are copies (the shared LM that the
  fluency and quality branches use is never modified), rebuilt from the same config with
  ``num_hidden_layers=lora_layers`` and fed the split state as ``inputs_embeds``; with the LoRA at its initial
  value (B = 0) this reproduces the base model's last hidden state exactly (tests/test_lm_rm.py checks it).
- The saved model holds only the LoRA weights and the head (safetensors); the base weights are named by the
  model's identity (name and SHA-256 of its weights), and loading refuses a different base model.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from lifelong.adapters.lm.model_loading import model_identity
from lifelong.adapters.lm.model_pool import Device, get_llm, use_lock
from lifelong.platform.errors import UserError

#: the split states kept in memory per process (bytes); the least recently used go first
SPLIT_MEMO_BYTES = 768 * 2**20
_memo: "OrderedDict[tuple[Any, ...], torch.Tensor]" = OrderedDict()
_memo_bytes = 0
_memo_lock = threading.Lock()


def _memo_get(key: tuple[Any, ...]) -> torch.Tensor | None:
    with _memo_lock:
        t = _memo.get(key)
        if t is not None:
            _memo.move_to_end(key)
        return t


def _memo_put(key: tuple[Any, ...], t: torch.Tensor) -> None:
    global _memo_bytes
    size = t.numel() * t.element_size()
    with _memo_lock:
        if key in _memo or size > SPLIT_MEMO_BYTES:
            return
        _memo[key] = t
        _memo_bytes += size
        while _memo_bytes > SPLIT_MEMO_BYTES:
            _, old = _memo.popitem(last=False)
            _memo_bytes -= old.numel() * old.element_size()


def clear_split_memo() -> None:
    """Forget every memoised split state (the bench measures the cost without them)."""
    global _memo_bytes
    with _memo_lock:
        _memo.clear()
        _memo_bytes = 0


# ---------------------------------------------------------------------------------------------- LM helpers
def chat_prompt(tok: Any, message: str) -> str:
    """``message`` as a user turn in the model's chat template, ready for the assistant's first token."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                       add_generation_prompt=True)
    return f"{message}\nAnswer:"


def first_token_ids(tok: Any, variants: Sequence[str]) -> list[int]:
    """The distinct first token ids of ``variants`` (e.g. "A", " A"): the ways an answer can start."""
    ids = set()
    for v in variants:
        t = tok(v, add_special_tokens=False)["input_ids"]
        if t:
            ids.add(int(t[0]))
    return sorted(ids)


def lora_targets(module: nn.Module) -> list[str]:
    """The leaf names of every ``nn.Linear`` inside ``module`` (q_proj, ..., down_proj for a Llama block)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class LMBatch:
    """A padded batch of split states: ``states`` (batch, length, hidden), ``mask`` (batch, length), right padded."""

    states: torch.Tensor
    mask: torch.Tensor


class LMTextInputs:
    """The split state of each text (a list of (tokens, hidden) tensors); indexing with a tensor or list of
    positions gives a padded ``LMBatch`` on ``device``."""

    def __init__(self, states: list[torch.Tensor], device: torch.device) -> None:
        self.states = states
        self.device = device

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, idx: Any) -> LMBatch:
        rows = [self.states[int(i)] for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[1]
        states = torch.zeros(len(rows), width, hidden, dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            states[b, : r.shape[0]] = r
            mask[b, : r.shape[0]] = 1
        return LMBatch(states.to(self.device), mask.to(self.device))


# ---------------------------------------------------------------------------------------------- the text term
class LMTextTerm(nn.Module):
    """The top ``n_top`` decoder layers of a causal LM (copies, LoRA on every linear layer), its final norm, and a
    linear head on the last real token's state: (batch of split states) -> (batch, 1)."""

    def __init__(self, base: nn.Module, n_top: int, *, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        decoder = base.get_decoder()
        n = len(decoder.layers)
        cfg = copy.deepcopy(decoder.config)
        cfg.num_hidden_layers = n_top
        cfg.vocab_size = 1  # the copy never embeds tokens (it is fed split states): no vocabulary-sized table
        cfg.pad_token_id = None
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[n - n_top:]
        cfg.use_cache = False
        top = type(decoder)(cfg)
        for i in range(n_top):
            top.layers[i].load_state_dict(decoder.layers[n - n_top + i].state_dict())
        top.norm.load_state_dict(decoder.norm.state_dict())
        top.embed_tokens = None
        top.to(next(base.parameters()).device)
        for p in top.parameters():
            p.requires_grad_(False)
        lcfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(top.layers),
                          bias="none")
        self.body = inject_adapter_in_model(lcfg, top)
        for name, p in self.body.named_parameters():
            p.requires_grad_("lora_" in name)
        self.head = nn.Linear(cfg.hidden_size, 1).to(next(base.parameters()).device)

    def forward(self, batch: LMBatch) -> torch.Tensor:
        out = self.body(inputs_embeds=batch.states, attention_mask=batch.mask, use_cache=False).last_hidden_state
        last = batch.mask.sum(1) - 1
        h = out[torch.arange(out.shape[0], device=out.device), last]
        return self.head(h.float())


# ---------------------------------------------------------------------------------------------- the backbone
class LMBackbone:
    """The frozen part of the LM backbone: tokenises joined texts, computes (and memoises) their split states, and
    builds fresh trainable text terms on top. ``llm`` names the model (``lifelong.adapters.lm.model_loading.load_causal_lm``)."""

    def __init__(self, llm: str, device: Device, *, lora_layers: int, lora_rank: int, lora_alpha: float,
                 dropout: float, max_length: int, batch_size: int = 16) -> None:
        self.llm = llm
        self.device = torch.device(device)
        self.lora_layers = lora_layers
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.dropout = dropout
        self.max_length = max_length
        self.batch_size = batch_size

    def model(self) -> tuple[Any, Any]:
        """The shared frozen LM and its tokenizer (loaded once per process and device)."""
        model, tok = get_llm(self.llm, self.device)
        n = len(model.get_decoder().layers)
        if not 1 <= self.lora_layers <= n:
            raise UserError(f"lora_layers must be between 1 and {n} for model {self.llm!r}, got {self.lora_layers}")
        return model, tok

    def identity(self) -> dict[str, str]:
        """Name and weights SHA-256 of the base LM (recorded with a trained model, checked when it is loaded)."""
        return model_identity(self.model()[0])

    @property
    def split(self) -> int:
        """Index of the first trained layer: the split state is the input of this layer."""
        return len(self.model()[0].get_decoder().layers) - self.lora_layers

    def inputs(self, texts: Sequence[str]) -> LMTextInputs:
        """The split state of each text, computed by the frozen layers once per text (memoised)."""
        model, tok = self.model()
        split = self.split
        ident = model_identity(model)
        base_key = (ident["name"], ident["weights_sha256"], split, self.max_length)
        keys = [base_key + (hashlib.sha256(t.encode("utf-8")).hexdigest(),) for t in texts]
        found: dict[int, torch.Tensor] = {}
        todo: dict[tuple[Any, ...], list[int]] = {}
        for i, k in enumerate(keys):
            t = _memo_get(k)
            if t is not None:
                found[i] = t
            else:
                todo.setdefault(k, []).append(i)
        if todo:
            first = [idx[0] for idx in todo.values()]
            with use_lock("llm", self.llm, self.device):
                ids = [tok(texts[i], add_special_tokens=False)["input_ids"][: self.max_length - 1] + [tok.eos_token_id]
                       for i in first]
            order = sorted(range(len(first)), key=lambda j: len(ids[j]))  # similar lengths together: less padding
            decoder = model.get_decoder()
            for s in range(0, len(order), self.batch_size):
                chunk = order[s:s + self.batch_size]
                width = max(len(ids[j]) for j in chunk)
                x = torch.tensor([ids[j] + [tok.pad_token_id] * (width - len(ids[j])) for j in chunk],
                                 device=self.device)
                m = torch.tensor([[1] * len(ids[j]) + [0] * (width - len(ids[j])) for j in chunk], device=self.device)
                with torch.inference_mode():
                    hs = decoder(input_ids=x, attention_mask=m, output_hidden_states=True).hidden_states[split]
                for row, j in enumerate(chunk):
                    state = hs[row, : len(ids[j])].float().cpu().clone()
                    key = keys[first[j]]
                    _memo_put(key, state)
                    for i in todo[key]:
                        found[i] = state
        return LMTextInputs([found[i] for i in range(len(texts))], self.device)

    def new_text_term(self) -> LMTextTerm:
        """A fresh text term (LoRA B = 0, a new head) over the top layers, initialised from torch's current RNG."""
        model, _ = self.model()
        return LMTextTerm(model, self.lora_layers, rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.dropout)
