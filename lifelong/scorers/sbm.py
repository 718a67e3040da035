"""Generative side-branch models (SBMs): ``sbm-semantic``, ``sbm-entity``, ``sbm-fact-check``, ``sbm-style``,
registered as ``branch`` plugins. Each is a causal LM (default the embedded SmolLM2-135M-Instruct) with one LoRA
adapter (peft) for its dimension, which writes the auxiliary text about a (prompt, response) pair that the
structural reward model reads.

Paper: Liu et al., "Structural Reward Model", arXiv 2509.25361. The paper's SBMs are LLMs fine-tuned per
dimension (semantic understanding, entity background, fact-check, style, quality); their training data is made by
sampling several candidate texts per pair, keeping the best by a judge (a strong LLM there), and fine-tuning on
the kept texts (SFT). This module follows that pipeline (``train_sbm``):

1. for each (prompt, response) of the training pairs (the chosen and the rejected response), sample
   ``candidates`` texts from the LM (with the adapter at its initial value, i.e. the base model) given the
   dimension's instruction;
2. keep the best candidate by the judge;
3. fine-tune the LoRA adapter on the kept texts (loss on the text's tokens only) and save it as safetensors.

Where it departs or fills a gap: no strong LLM is available offline, so the judge is reference-based. Each
dimension names a ``reference`` branch plugin (any registered ``branch``) whose text is the reference, and the
judge is the word-overlap F1 between a candidate and that text (lower-case words, function words ignored):
``sbm-entity`` is judged against the WordNet background of the ``entity-background`` branch, ``sbm-fact-check``
against the ``fact-check`` branch's verdict from the knowledge source, ``sbm-semantic`` against ``semantic``,
``sbm-style`` against ``style``. The paper's ``quality`` SBM is not built: its only offline judge would be the same
135M model judging itself. With best-of-N on the base model's own samples, the kept texts are only as good as the
best of N samples of a 135M model (docs/reward.md measures it). An SBM's one feature is the mean token
log-probability of the text it wrote (its confidence); its text is what the reward model reads.

At scoring time the branch writes greedily (``max_new_tokens``) with the adapter merged into a private copy of the
LM (the shared copy that other branches use is never changed); outputs are cached on disk like every branch's,
keyed by the model's name, the adapter's SHA-256 (or "none": the base model with the instruction alone, usable
before any training), the generation options and the input. Adapter folder (``reward sbm-train --out DIR``):
``adapter.safetensors`` (the LoRA weights) and ``sbm.json`` (dimension, base model identity, LoRA settings, the
adapter's SHA-256, the training report), written as a whole and put in place in one step.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL, model_identity
from lifelong.adapters.lm.model_pool import get_llm, use_lock
from lifelong.platform.atomic import atomic_write_text, atomic_write_with, file_sha256, fsync_dir
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register
from lifelong.scorers._branches import Branch, BranchOutput, Item, make_branches, words
from lifelong.scorers._lm_backbone import chat_prompt, lora_targets
from lifelong.scorers._reward_model import _put_in_place, _restore_aside

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

_STOP = frozenset("""a an the of in on at to for from by with and or but is are was were be been it its this that
these those what which who whom how do does did not no yes i you he she we they as than then so if about into
response question answer""".split())


def overlap_f1(candidate: str, reference: str) -> float:
    """Word-overlap F1 of ``candidate`` against ``reference`` (lower-case words, function words ignored): the
    judge that keeps the best of N candidates. 0 when either has no content word."""
    c = {w for w in words(candidate) if w not in _STOP}
    r = {w for w in words(reference) if w not in _STOP}
    common = len(c & r)
    if not common:
        return 0.0
    p, q = common / len(c), common / len(r)
    return 2 * p * q / (p + q)


def strip_label(text: str) -> str:
    """A branch text without its leading ``name:`` label (``fact-check: known fact ...`` -> ``known fact ...``)."""
    return re.sub(r"^[a-z][a-z -]*:\s*", "", text.strip(), count=1)


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
    _restore_aside(folder)
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


def _lora_config(settings: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=int(settings["r"]), lora_alpha=float(settings["alpha"]), lora_dropout=float(settings["dropout"]),
                      target_modules=list(settings["targets"]), bias="none", task_type="CAUSAL_LM")


def _private_copy(llm: str, device: Any) -> tuple[Any, Any]:
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
    model, tok = _private_copy(llm, device)
    peft_model = get_peft_model(model, _lora_config(meta["lora"]))
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
    make.__doc__ = f"The {name} generative side branch (lifelong.scorers.sbm)."
    return make


for _name, _dim in DIMENSIONS.items():
    register("branch", _name, config=SBMConfig,
             summary=f"generative SBM: the LM + a LoRA adapter writes the {_name[4:]} text (judge: {_dim.reference})")(
        _factory(_name))


# ---------------------------------------------------------------------------------------------- training
@dataclass
class SBMTrainConfig:
    """``reward sbm-train`` options: best-of-``candidates`` sampling at ``temperature``, then ``epochs`` of SFT
    with LoRA rank ``lora_rank`` at ``lr``; ``reference_config``: options of the judging reference branch."""

    llm: str = DEFAULT_MODEL
    candidates: int = 4
    temperature: float = 0.9
    max_new_tokens: int = 40
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 8
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    seed: int = 0
    device: str = "cpu"
    reference_config: dict[str, Any] | None = None

    def validate(self) -> None:
        for key in ("candidates", "max_new_tokens", "epochs", "batch_size", "lora_rank"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0 or self.lr <= 0 or self.lora_alpha <= 0:
            raise ValueError("temperature, lr and lora_alpha must be > 0")


def best_of_n(candidates: Sequence[Sequence[str]], references: Sequence[str],
              judge: Callable[[str, str], float] = overlap_f1) -> list[tuple[str, float, float]]:
    """For each input, the candidate the judge scores highest against its reference (the first on ties), its
    score and the mean score of all candidates."""
    out = []
    for cands, ref in zip(candidates, references):
        scores = [judge(c, ref) for c in cands]
        best = max(range(len(cands)), key=lambda i: (scores[i], -i))
        out.append((cands[best], scores[best], sum(scores) / len(scores)))
    return out


def train_sbm(branch: str, pairs: Sequence[Any], out: str | os.PathLike, *, config: SBMTrainConfig | None = None,
              seed: int | None = None, cache: Any = None) -> dict[str, Any]:
    """Train the SBM ``branch`` (e.g. ``sbm-fact-check``) on ``pairs`` (best-of-N by the judge, then SFT) and save
    its adapter to ``out``; returns the training report (also in ``sbm.json``)."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    if branch not in DIMENSIONS:
        raise UserError(f"unknown SBM branch {branch!r}; allowed values: {', '.join(DIMENSIONS)}")
    if not pairs:
        raise UserError("no preference pairs to train the SBM on")
    cfg = config or SBMTrainConfig()
    if seed is not None:
        cfg.seed = seed
    dim = DIMENSIONS[branch]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    start = time.perf_counter()
    items = list(dict.fromkeys([(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]))
    reference_branch = make_branches([dim.reference], llm=cfg.llm, device=cfg.device,
                                     facts=["bundled"] if dim.reference == "fact-check" else [],
                                     branch_config={dim.reference: cfg.reference_config} if cfg.reference_config
                                     else None)[0]
    from lifelong.scorers._branches import run_branches

    refs = [strip_label(o.text) for o in run_branches([reference_branch], items, cache, parallel=False)[dim.reference]]
    t_ref = time.perf_counter() - start

    base, tok = get_llm(cfg.llm, cfg.device)
    sampler = SBMBranch(dim, SBMConfig(llm=cfg.llm, device=cfg.device))
    messages = [sampler.message(p, r) for p, r in items]
    torch.manual_seed(cfg.seed)
    t = time.perf_counter()
    flat = generate(base, tok, cfg.llm, cfg.device, messages, max_new_tokens=cfg.max_new_tokens,
                    batch_size=max(1, cfg.batch_size), sample=True, n=cfg.candidates, temperature=cfg.temperature)
    cands = [[flat[i * cfg.candidates + j][0] for j in range(cfg.candidates)] for i in range(len(items))]
    kept = best_of_n(cands, refs)
    t_sample = time.perf_counter() - t

    # SFT: LoRA on every linear layer of the decoder, loss on the kept text's tokens (and its end) only
    t = time.perf_counter()
    model, _ = _private_copy(cfg.llm, cfg.device)
    targets = lora_targets(model.get_decoder().layers)
    lora = {"r": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": targets}
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, _lora_config(lora))
    with use_lock("llm", cfg.llm, cfg.device):
        seqs = []
        for msg, (text, _, _) in zip(messages, kept):
            ctx = tok(chat_prompt(tok, msg), add_special_tokens=False)["input_ids"]
            tgt = tok(text, add_special_tokens=False)["input_ids"][: cfg.max_new_tokens] + [tok.eos_token_id]
            seqs.append((ctx, tgt))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    peft_model.train()
    losses: list[float] = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(seqs), generator=gen).tolist()
        for s in range(0, len(perm), cfg.batch_size):
            batch = [seqs[i] for i in perm[s:s + cfg.batch_size]]
            width = max(len(c) + len(g) for c, g in batch)
            ids = torch.tensor([c + g + [pad] * (width - len(c) - len(g)) for c, g in batch], device=cfg.device)
            mask = torch.tensor([[1] * (len(c) + len(g)) + [0] * (width - len(c) - len(g)) for c, g in batch],
                                device=cfg.device)
            labels = torch.tensor([[-100] * len(c) + g + [-100] * (width - len(c) - len(g)) for c, g in batch],
                                  device=cfg.device)
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    t_sft = time.perf_counter() - t
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    per_epoch = max(1, -(-len(seqs) // cfg.batch_size))
    report = {
        "n_pairs": len(pairs), "n_texts": len(items), "candidates": cfg.candidates,
        "judge": f"word-overlap F1 with the {dim.reference} branch's text",
        "judge_best_mean": round(sum(k[1] for k in kept) / len(kept), 4),
        "judge_candidates_mean": round(sum(k[2] for k in kept) / len(kept), 4),
        "sft_loss_first_epoch": round(sum(losses[:per_epoch]) / len(losses[:per_epoch]), 4),
        "sft_loss_last_epoch": round(sum(losses[-per_epoch:]) / len(losses[-per_epoch:]), 4),
        "seconds_reference": round(t_ref, 1), "seconds_sampling": round(t_sample, 1), "seconds_sft": round(t_sft, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "examples": [{"prompt": items[i][0], "response": items[i][1], "reference": refs[i], "kept": kept[i][0]}
                     for i in range(min(3, len(items)))],
    }
    meta = {"format_version": FORMAT_VERSION, "dimension": branch, "instruction": dim.instruction,
            "base_model": model_identity(base), "llm": cfg.llm, "lora": lora, "training": report}
    _save_adapter(out, state, meta)
    return report


def _save_adapter(out: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    _restore_aside(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()
    try:
        atomic_write_with(tmp / ADAPTER_FILE, lambda t: save_file(state, str(t), metadata={"dimension": meta["dimension"]}))
        meta["adapter_sha256"] = file_sha256(tmp / ADAPTER_FILE)
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2))
        fsync_dir(tmp)
        _put_in_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
