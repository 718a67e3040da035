"""Generative side-branch models (SBMs): ``sbm-semantic``, ``sbm-entity``, ``sbm-fact-check``, ``sbm-style``,
registered as ``branch`` plugins. Each is a causal LM (default the embedded SmolLM2-135M-Instruct) with one LoRA
adapter (peft) for its dimension, which writes the auxiliary text about a (prompt, response) pair that the
structural reward model reads.

Paper: Liu et al., "Structural Reward Model", arXiv 2509.25361. The paper's SBMs are LLMs fine-tuned per
dimension (semantic understanding, entity background, fact-check, style, quality) on best-of-N texts kept by a
judge. This module is the branch at scoring time; the training pipeline that makes its adapter (sampling, the
judge, SFT) is ``sbm_train.py`` beside it, which says where that departs from the paper (a reference-based judge,
no ``quality`` SBM).

At scoring time the branch writes greedily (``max_new_tokens``) with the adapter merged into a private copy of the
LM (the shared copy that other branches use is never changed); outputs are cached on disk like every branch's,
keyed by the model's name, the adapter's SHA-256 (or "none": the base model with the instruction alone, usable
before any training), the generation options and the input. An SBM's one feature is the mean token
log-probability of the text it wrote (its confidence); its text is what the reward model reads. Adapter folder
(``reward sbm-train --out DIR``): ``adapter.safetensors`` (the LoRA weights) and ``sbm.json`` (dimension, base
model identity, LoRA settings, the adapter's SHA-256, the training report), written whole by
``lifelong.platform.atomic.atomic_folder``.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL, model_identity
from lifelong.adapters.lm.model_pool import get_llm, use_lock
from lifelong.platform.atomic import file_sha256, recover_folder
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register
from lifelong.scorers.branches.base import Branch, BranchOutput, Item
from lifelong.scorers.lm_backbone import chat_prompt

ADAPTER_FILE = "adapter.safetensors"
META_FILE = "sbm.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Dimension:
    """One SBM dimension: the instruction the LM gets and the branch whose text judges its candidates."""

    name: str
    instruction: str
    reference: str


_FRAME = "Question: {prompt}\nResponse: {response}\n\n"
DIMENSIONS: dict[str, Dimension] = {d.name: d for d in (
    Dimension("sbm-semantic", _FRAME + "In one sentence: what does the question ask, and does the response address "
              "it (on topic or off topic)?", "semantic"),
    Dimension("sbm-entity", _FRAME + "Give short background on the main things the question names: what each is, "
              "what it is a kind of, and what it is part of.", "entity-background"),
    Dimension("sbm-fact-check", _FRAME + "Fact-check the response: state the correct fact the question asks about "
              "and say whether the response states it.", "fact-check"),
    Dimension("sbm-style", _FRAME + "Describe the response's style in one sentence: its length, repetition, "
              "capitals, punctuation, and whether it follows the requested format.", "style"),
)}


@dataclass
class SBMConfig:
    """An SBM branch's options. ``adapter``: a folder written by ``lifelong reward sbm-train`` (None: the base model
    with the instruction alone); ``llm``, ``batch_size``, ``device`` come from the scorer-wide keys by name."""

    adapter: str | None = None
    llm: str = DEFAULT_MODEL
    max_new_tokens: int = 40
    batch_size: int = 16
    device: str = "cpu"

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.adapter is not None and not (Path(self.adapter) / META_FILE).is_file():
            raise ValueError(f"adapter: {self.adapter} is not an SBM adapter folder (no {META_FILE}; make one with "
                             "`lifelong reward sbm-train`)")


# ---------------------------------------------------------------------------------------------- models
_models: dict[tuple[Any, ...], Any] = {}
_models_lock = threading.Lock()


def read_adapter(folder: str | os.PathLike) -> dict[str, Any]:
    """``sbm.json`` of an adapter folder, its weights checked against the recorded SHA-256 (one-line errors)."""
    folder = Path(folder)
    recover_folder(folder)  # what a killed save left beside it
    meta_path, weights = folder / META_FILE, folder / ADAPTER_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise UserError(f"{folder}: not an SBM adapter (needs {META_FILE} and {ADAPTER_FILE}; "
                        "make one with `lifelong reward sbm-train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_path}: cannot read ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or "lora" not in meta:
        raise UserError(f"{meta_path}: not an SBM adapter description of format version {FORMAT_VERSION}")
    if file_sha256(weights) != meta.get("adapter_sha256"):
        raise UserError(f"{weights}: does not match the checksum in {META_FILE} (a damaged or replaced file); "
                        "retrain it with `lifelong reward sbm-train`")
    return meta


def lora_config(settings: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=int(settings["r"]), lora_alpha=float(settings["alpha"]), lora_dropout=float(settings["dropout"]),
                      target_modules=list(settings["targets"]), bias="none", task_type="CAUSAL_LM")


def private_copy(llm: str, device: Any) -> tuple[Any, Any]:
    """A private copy of the shared LM (the shared one is never changed) and the shared tokenizer."""
    base, tok = get_llm(llm, device)
    model = copy.deepcopy(base)
    if hasattr(model, "_lifelong_identity"):
        del model._lifelong_identity  # its weights are about to change
    return model, tok


def sbm_model(llm: str, adapter: str | None, device: Any) -> tuple[Any, Any]:
    """The LM with the adapter merged in (a private copy, loaded once per process), or the shared base model."""
    if adapter is None:
        return get_llm(llm, device)
    meta = read_adapter(adapter)
    key = (llm, meta["adapter_sha256"], str(device))
    with _models_lock:
        if key in _models:
            return _models[key]
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    base_ident = model_identity(get_llm(llm, device)[0])
    if meta["base_model"]["weights_sha256"] != base_ident["weights_sha256"]:
        raise UserError(f"{adapter}: trained on base model {meta['base_model']['name']!r}, not on {llm!r} "
                        "(different weights): set llm to the model it was trained on")
    model, tok = private_copy(llm, device)
    peft_model = get_peft_model(model, lora_config(meta["lora"]))
    set_peft_model_state_dict(peft_model, load_file(str(Path(adapter) / ADAPTER_FILE), device=str(device)))
    merged = peft_model.merge_and_unload().eval()
    for p in merged.parameters():
        p.requires_grad_(False)
    with _models_lock:
        _models.setdefault(key, (merged, tok))
        return _models[key]


def generate(model: Any, tok: Any, llm: str, device: Any, messages: Sequence[str], *, max_new_tokens: int,
             batch_size: int, sample: bool = False, n: int = 1, temperature: float = 1.0) -> list[tuple[str, float]]:
    """For each message (a user turn in the chat template) ``n`` texts and the mean token log-probability of each
    (greedy, or sampled at ``temperature``), in order: message 0's n texts, then message 1's, ..."""
    import torch

    lock = use_lock("llm", llm, device)
    with lock:
        encoded = [tok(chat_prompt(tok, m), add_special_tokens=False)["input_ids"] for m in messages]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[tuple[str, float]] = []
    for s in range(0, len(encoded), batch_size):
        chunk = encoded[s:s + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in chunk], device=device)  # left padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in chunk], device=device)
        opts: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if sample else \
            {"do_sample": False}
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 num_return_sequences=n, output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=pad, **opts)
            scores = model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
        new = gen.sequences[:, width:].cpu()
        valid = torch.ones_like(new, dtype=torch.bool)
        for row in range(new.shape[0]):  # tokens after the first end-of-text are padding
            ends = (new[row] == tok.eos_token_id).nonzero()
            if len(ends):
                valid[row, int(ends[0]) + 1:] = False
        lp = [float(scores[r].cpu()[valid[r]].float().mean()) if valid[r].any() else 0.0 for r in range(new.shape[0])]
        with lock:
            texts = tok.batch_decode(new, skip_special_tokens=True)
        out += [(" ".join(t.split()), p) for t, p in zip(texts, lp)]
    return out


# ---------------------------------------------------------------------------------------------- the branch
class SBMBranch(Branch):
    """A generative side branch: the LM (with its dimension's adapter) writes the auxiliary text for each pair."""

    feature_names = ("mean_logprob",)
    version = "1"

    def __init__(self, dimension: Dimension, config: SBMConfig | None = None) -> None:
        self.dimension = dimension
        self.name = dimension.name
        self.config = config or SBMConfig()
        self.adapter_sha = "none"
        if self.config.adapter:
            meta = read_adapter(self.config.adapter)
            if meta.get("dimension") != dimension.name:
                raise UserError(f"{self.config.adapter}: an adapter for {meta.get('dimension')!r}, "
                                f"not for {dimension.name!r}")
            self.adapter_sha = meta["adapter_sha256"]

    def fingerprint(self) -> str:
        return (f"{super().fingerprint()}/{self.config.llm}/{self.adapter_sha}/{self.config.max_new_tokens}"
                f"/{hash_text(self.dimension.instruction)}")

    def message(self, prompt: str, response: str) -> str:
        return self.dimension.instruction.format(prompt=prompt.strip()[:800], response=response.strip()[:800])

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        model, tok = sbm_model(self.config.llm, self.config.adapter, self.config.device)
        outs = generate(model, tok, self.config.llm, self.config.device, [self.message(p, r) for p, r in items],
                        max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size)
        return [BranchOutput((lp,), f"{self.name}: {text}") for text, lp in outs]


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _factory(name: str) -> Callable[[SBMConfig], SBMBranch]:
    def make(config: SBMConfig) -> SBMBranch:
        return SBMBranch(DIMENSIONS[name], config)

    make.__name__ = f"make_{name.replace('-', '_')}"
    make.__doc__ = f"The {name} generative side branch (lifelong.scorers.branches.sbm)."
    return make


for _name, _dim in DIMENSIONS.items():
    register("branch", _name, config=SBMConfig,
             summary=f"generative SBM: the LM + a LoRA adapter writes the {_name[4:]} text (judge: {_dim.reference})")(
        _factory(_name))
