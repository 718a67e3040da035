"""Training an SBM's adapter (``lifelong reward sbm-train``): best-of-N texts kept by a judge, then SFT with LoRA.

Paper: Liu et al., "Structural Reward Model", arXiv 2509.25361. The paper's SBMs are LLMs fine-tuned per
dimension; their training data is made by sampling several candidate texts per pair, keeping the best by a judge
(a strong LLM there), and fine-tuning on the kept texts (SFT). ``train_sbm`` follows that pipeline:

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
best of N samples of a 135M model (docs/reward.md measures it). The branch that uses the adapter is ``sbm.py``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL, model_identity
from lifelong.adapters.lm.model_pool import get_llm, use_lock
from lifelong.platform.atomic import atomic_folder, atomic_write_text, atomic_write_with, file_sha256
from lifelong.platform.errors import UserError
from lifelong.scorers.branches.base import run_branches, words
from lifelong.scorers.branches.factory import make_branches
from lifelong.scorers.branches.sbm import (
    ADAPTER_FILE,
    DIMENSIONS,
    FORMAT_VERSION,
    META_FILE,
    SBMBranch,
    SBMConfig,
    generate,
    lora_config,
    private_copy,
)
from lifelong.scorers.lm_backbone import chat_prompt, lora_targets

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
    model, _ = private_copy(cfg.llm, cfg.device)
    targets = lora_targets(model.get_decoder().layers)
    lora = {"r": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": targets}
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora_config(lora))
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
    """Write the adapter folder whole (weights, then ``sbm.json`` with their checksum), replacing an older one."""
    from safetensors.torch import save_file

    with atomic_folder(out, what="--out") as tmp:
        atomic_write_with(tmp / ADAPTER_FILE, lambda t: save_file(state, str(t), metadata={"dimension": meta["dimension"]}))
        meta["adapter_sha256"] = file_sha256(tmp / ADAPTER_FILE)
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2))
