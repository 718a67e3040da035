"""The generative reward model baseline (scorer ``grm``): the language model is asked which of two responses is
better, and its answer's log-probability is the preference.

Paper: Liu et al., "Structural Reward Model", arXiv 2509.25361, compares SRM with a scalar RM and a generative RM
(an LLM that judges responses in words). The paper does not fix the generative RM's protocol; this one follows the
common pairwise LLM-as-a-judge set-up (Zheng et al., "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena",
NeurIPS 2023): both responses are shown as "Response A" and "Response B", the model answers with a letter, and
the order is swapped and averaged to cancel position bias (Zheng et al. report that bias and the swap remedy).

How a preference is scored: for responses x (shown as A) and y (shown as B) the judge's margin is
``m(x, y) = log P(answer starts with A) - log P(answer starts with B)`` at the assistant's first token (the
token variants "A" / " A" are pooled by log-sum-exp); the preference of x over y is ``(m(x, y) - m(y, x)) / 2``,
so a judge that always favours the first slot by c gains nothing from it. No sampling, no parsing of free text.

Where it departs or fills gaps: the judge is the local SmolLM2-135M-Instruct (no stronger LLM is available
offline) with no fine-tuning, so ``reward train --scorer grm`` trains nothing: it only writes a folder that
names the scorer and its config, and ``reward eval --model grm`` works without one. A generative RM compares; it
gives no absolute reward for a single response, so ``score`` is refused in one line. Judgements are cached on
disk (the branch cache, ``$LIFELONG_CACHE/srm-branches.sqlite``) by the model's name, the judging template and
the exact (prompt, A, B), as the side branches' outputs are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lifelong.adapters.lm.model_pool import get_llm, use_lock
from lifelong.platform.atomic import atomic_folder, atomic_write_text
from lifelong.platform.config import to_dict
from lifelong.platform.device import resolve_device
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create, register
from lifelong.scorers.base import CONFIG_FILE, ScoreResult, read_meta
from lifelong.scorers.branches import CACHE_FILE, BranchCache, default_cache_path
from lifelong.scorers.lm_backbone import chat_prompt, first_token_ids

FORMAT_VERSION = 1
JUDGE_TEMPLATE = (
    "Which response answers the question better: correct, on topic, fluent and in the requested form?\n\n"
    "Question: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
    "Answer with the single letter A or B."
)


@dataclass
class GRMConfig:
    """The judge: a local causal LM (``llm``), how much text it reads, and where it runs."""

    llm: str = "smollm2-135m"
    #: characters of the prompt and of each response shown to the judge (longer texts are cut)
    max_chars: int = 1200
    batch_size: int = 8
    #: False: one order only (response A is the first given): the position-biased judge, for comparison
    both_orders: bool = True
    cache_dir: str | None = None  # None: $LIFELONG_CACHE (default ~/.cache/lifelong); ":memory:" for no disk cache
    device: str = "auto"  # auto, cpu, cuda, cuda:N; not saved with the folder

    def validate(self) -> None:
        if self.max_chars < 16:
            raise ValueError(f"max_chars must be >= 16, got {self.max_chars}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, got {self.device!r}")


@dataclass
class GRMResult:
    """A generative RM's verdict on one pair: ``preference`` > 0 favours ``a``; ``margins`` per order shown."""

    preference: float
    margins: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"preference": self.preference, "margins": self.margins}


@register("scorer", "grm", config=GRMConfig,
          summary="generative RM baseline: the LM judges which of two responses is better (A/B log-prob, both orders)")
class GenerativeRewardModel:
    """The LM as a pairwise judge; nothing to train (``trains_nothing``), so it evaluates without a saved folder."""

    #: ``lifelong reward eval --model grm`` builds it with its defaults instead of reading a folder
    trains_nothing = True

    def __init__(self, config: GRMConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        cache_dir = config.cache_dir
        path = Path(cache_dir) / CACHE_FILE if cache_dir else default_cache_path()
        self.cache = BranchCache(path if cache_dir != ":memory:" else None)
        self.training: dict[str, Any] = {}

    # ------------------------------------------------------------------ judging
    def _namespace(self) -> str:
        h = hashlib.sha256(JUDGE_TEMPLATE.encode()).hexdigest()[:12]
        return f"grm/v1/{self.config.llm}/{self.config.max_chars}/{h}"

    def _message(self, prompt: str, a: str, b: str) -> str:
        n = self.config.max_chars
        return JUDGE_TEMPLATE.format(prompt=prompt.strip()[:n], a=a.strip()[:n], b=b.strip()[:n])

    def margins(self, triples: Sequence[tuple[str, str, str]]) -> list[float]:
        """``m(a, b)`` for each (prompt, a, b): log P(A) - log P(B) at the judge's first answer token (cached)."""
        import torch

        ns = self._namespace()
        keys = [BranchCache.key(ns, p, f"{a}\x00{b}") for p, a, b in triples]
        hit = self.cache.get_many(keys)
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in hit}.values())
        fresh: dict[str, str] = {}
        if todo:
            model, tok = get_llm(self.config.llm, self.device)
            with use_lock("llm", self.config.llm, self.device):
                ids_a = first_token_ids(tok, ["A", " A"])
                ids_b = first_token_ids(tok, ["B", " B"])
                encoded = [tok(chat_prompt(tok, self._message(*triples[i])), add_special_tokens=False)["input_ids"]
                           for i in todo]
            order = sorted(range(len(todo)), key=lambda j: len(encoded[j]))
            body, head = model.get_decoder(), model.get_output_embeddings()
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            for s in range(0, len(order), self.config.batch_size):
                chunk = order[s:s + self.config.batch_size]
                width = max(len(encoded[j]) for j in chunk)
                x = torch.tensor([encoded[j] + [pad] * (width - len(encoded[j])) for j in chunk], device=self.device)
                m = torch.tensor([[1] * len(encoded[j]) + [0] * (width - len(encoded[j])) for j in chunk],
                                 device=self.device)
                with torch.inference_mode():
                    hidden = body(input_ids=x, attention_mask=m).last_hidden_state
                    last = hidden[torch.arange(len(chunk), device=self.device), m.sum(1) - 1]
                    logp = torch.log_softmax(head(last).float(), -1)
                    margin = torch.logsumexp(logp[:, ids_a], -1) - torch.logsumexp(logp[:, ids_b], -1)
                for j, v in zip(chunk, margin.tolist()):
                    fresh[keys[todo[j]]] = json.dumps(round(float(v), 6))
            self.cache.put_many(fresh)
        return [float(json.loads(fresh.get(k) or hit[k])) for k in keys]

    def compare_many(self, triples: Sequence[tuple[str, str, str]]) -> list[GRMResult]:
        """The preference of ``a`` over ``b`` for each (prompt, a, b), both orders averaged (``both_orders``)."""
        if not self.config.both_orders:
            return [GRMResult(m, {"a_first": m}) for m in self.margins(triples)]
        swapped = [(p, b, a) for p, a, b in triples]
        ms = self.margins(list(triples) + swapped)
        n = len(triples)
        return [GRMResult((ms[i] - ms[n + i]) / 2, {"a_first": ms[i], "b_first": ms[n + i]}) for i in range(n)]

    def compare(self, prompt: str, a: str, b: str) -> GRMResult:
        """How much the judge prefers ``a`` to ``b`` as an answer to ``prompt`` (> 0: ``a``), in log-probability."""
        return self.compare_many([(prompt, a, b)])[0]

    def score(self, prompt: str, response: str) -> ScoreResult:
        """Refused: a generative RM compares two responses and gives no reward for one."""
        raise UserError("grm compares two responses and gives no reward for a single one: use `lifelong reward eval` "
                        "(or GenerativeRewardModel.compare(prompt, a, b) in Python)")

    def evaluate(self, pairs: Sequence[Any]) -> dict[str, Any]:
        """Pairwise accuracy (the chosen response strictly preferred), overall and per dimension, with how often
        the two orders agree (``order_agreement``: both orders pick the same response)."""
        if not pairs:
            raise UserError("no preference pairs to evaluate")
        res = self.compare_many([(p.prompt, p.chosen, p.rejected) for p in pairs])
        wins = [r.preference > 0 for r in res]
        per: dict[str, list[bool]] = {}
        for p, w in zip(pairs, wins):
            if p.dimension:
                per.setdefault(p.dimension, []).append(w)
        report: dict[str, Any] = {
            "accuracy": float(np.mean(wins)),
            "n_pairs": len(pairs),
            "per_dimension": {d: {"accuracy": float(np.mean(v)), "n_pairs": len(v)} for d, v in sorted(per.items())},
        }
        if self.config.both_orders:
            agree = [(r.margins["a_first"] > 0) == (r.margins["b_first"] < 0) for r in res]
            report["order_agreement"] = float(np.mean(agree))
            report["first_order_accuracy"] = float(np.mean([r.margins["a_first"] > 0 for r in res]))
        return report

    # ------------------------------------------------------------------ the CLI's train / save / load
    def fit(self, pairs: Sequence[Any]) -> dict[str, Any]:
        """Trains nothing (the judge is the LM as it is); returns the summary ``reward train`` prints."""
        if not pairs:
            raise UserError("no preference pairs to train on")
        self.training = {"n_pairs": len(pairs), "seconds": 0.0, "train_accuracy": None, "final_loss": None,
                         "trained": False}
        return dict(self.training)

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``config.json`` (the scorer name and its config) into ``out``, replacing a folder in one step."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a directory")
        config = to_dict(self.config)
        config.pop("device", None)
        meta = {"format_version": FORMAT_VERSION, "scorer": "grm", "config": config, "training": self.training}
        with atomic_folder(out, what="--out") as tmp:  # a crash leaves the old folder or the new one
            atomic_write_text(tmp / CONFIG_FILE, json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike, **overrides: Any) -> "GenerativeRewardModel":
        """The judge a folder written by ``save`` describes (its config); ``overrides`` replace config keys."""
        path = Path(folder) / CONFIG_FILE
        meta = read_meta(folder)  # the contract's checks: a folder, a readable config.json that names a scorer
        if meta.get("scorer") != "grm" or not isinstance(meta.get("config"), dict):
            raise UserError(f"{path}: not a grm config")
        model = create("scorer", "grm", **{**meta["config"], **overrides})
        model.training = dict(meta.get("training") or {})
        return model
