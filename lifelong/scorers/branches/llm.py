"""The branches that run the local causal language model: ``fluency`` and ``quality``.

- ``fluency``: the LM's mean (and worst-quartile) token log-likelihood of the response given the prompt;
- ``quality``: a generative judge: the LM is asked whether the answer is correct and well written; its short
  answer is kept as text and its yes-vs-no logit margin is the feature.

The LM and its tokenizer are the process-wide shared ones (``lifelong.adapters.lm.model_pool.get_llm``), loaded on the
branch's ``device``; the tokenizer is used under its lock because the branches run in threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL
from lifelong.adapters.lm.model_pool import Device, get_llm, use_lock
from lifelong.platform.registry import register
from lifelong.scorers.branches.base import Branch, BranchOutput, Item


@dataclass
class LLMConfig:
    """``llm``: the local causal LM (a name ``lifelong.adapters.lm.model_loading`` loads); ``batch_size``: responses per forward;
    ``device``: where it runs (filled in by the scorer)."""

    llm: str = DEFAULT_MODEL
    batch_size: int = 16
    device: str = "cpu"

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class QualityConfig(LLMConfig):
    """The LM judge's options; ``max_new_tokens``: the length of its kept answer."""

    max_new_tokens: int = 8

    def validate(self) -> None:
        super().validate()
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class LLMBranch(Branch):
    """A branch that runs the local LM ``llm`` on ``device``, ``batch_size`` responses at a time."""

    def __init__(self, config: LLMConfig | None = None) -> None:
        self.config = config or LLMConfig()
        self.llm = self.config.llm
        self.batch_size = self.config.batch_size
        self.device: Device = self.config.device

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}/{self.llm}"


def _context(prompt: str) -> str:
    return f"Question: {prompt.strip()}\nAnswer:"


@register("branch", "fluency", config=LLMConfig,
          summary="the local LM's mean and worst-quartile token log-likelihood of the response")
class FluencyBranch(LLMBranch):
    """Mean (and worst-quartile) token log-likelihood of the response given the prompt, from the local LM."""

    name = "fluency"
    feature_names = ("mean_logprob", "worst_quartile_logprob")

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        import torch

        model, tok = get_llm(self.llm, self.device)
        encoded = []
        with use_lock("llm", self.llm, self.device):
            for p, r in items:
                ctx = tok(_context(p), add_special_tokens=False)["input_ids"][-192:]
                resp = tok(" " + r.strip(), add_special_tokens=False)["input_ids"][:192] or [tok.eos_token_id]
                encoded.append((ctx, resp))
        # batch similar lengths together (less padding); results go back in input order
        order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
        body, head = model.get_decoder(), model.get_output_embeddings()
        results: dict[int, BranchOutput] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            seqs = [encoded[i][0] + encoded[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            # built as lists and sent to the model's device in one copy each
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long, device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long,
                                device=self.device)
            with torch.inference_mode():
                hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
                for row, i in enumerate(idx):
                    a, b = len(encoded[i][0]), len(encoded[i][0]) + len(encoded[i][1])
                    # only the positions that predict response tokens go through the (large) output layer
                    logits = head(hidden[row, a - 1:b - 1]).float()
                    lp = torch.log_softmax(logits, -1).gather(-1, ids[row, a:b, None])[:, 0]
                    mean = float(lp.mean())
                    k = max(1, len(lp) // 4)
                    worst = float(torch.topk(lp, k, largest=False).values.mean())
                    label = "fluent" if mean > -3.0 else "somewhat awkward" if mean > -4.5 else "disfluent"
                    results[i] = BranchOutput((mean, worst), f"fluency: {label} (mean token log-likelihood {mean:.2f})")
        return [results[i] for i in range(len(items))]


_JUDGE = ("Question: {prompt}\nAnswer: {response}\n\nIs this answer correct, on topic and well written? "
          "Reply with yes or no, then give a short reason.")


@register("branch", "quality", config=QualityConfig,
          summary="the local LM as a yes/no judge: its short answer as text, the yes-vs-no logit margin")
class QualityBranch(LLMBranch):
    """A generative judge: the local LM answers a short yes/no judging question; its words are kept as text."""

    name = "quality"
    feature_names = ("yes_minus_no_logit",)

    def __init__(self, config: QualityConfig | None = None) -> None:
        super().__init__(config or QualityConfig())
        self.max_new_tokens = self.config.max_new_tokens

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}/{self.max_new_tokens}"

    @staticmethod
    def _ids(tok: Any, variants: Sequence[str]) -> list[int]:
        ids = set()
        for v in variants:
            t = tok(v, add_special_tokens=False)["input_ids"]
            if t:
                ids.add(t[0])
        return sorted(ids)

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        import torch

        model, tok = get_llm(self.llm, self.device)
        lock = use_lock("llm", self.llm, self.device)
        with lock:
            yes = self._ids(tok, ["yes", "Yes", " yes", " Yes", "YES"])
            no = self._ids(tok, ["no", "No", " no", " No", "NO"])
        out: list[BranchOutput] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            texts = []
            with lock:
                for p, r in batch:
                    msg = _JUDGE.format(prompt=p.strip()[:600], response=r.strip()[:600])
                    if getattr(tok, "chat_template", None):
                        texts.append(tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                                             add_generation_prompt=True))
                    else:
                        texts.append(msg + "\nReply:")
                side = tok.padding_side
                tok.padding_side = "left"
                try:
                    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                finally:
                    tok.padding_side = side
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     output_scores=True, return_dict_in_generate=True,
                                     pad_token_id=tok.pad_token_id)
            first = gen.scores[0].float()
            margin = torch.logsumexp(first[:, yes], -1) - torch.logsumexp(first[:, no], -1)
            new_tokens = gen.sequences[:, enc["input_ids"].shape[1]:].cpu()
            with lock:
                answers = tok.batch_decode(new_tokens, skip_special_tokens=True)
            for m, a in zip(margin.tolist(), answers):
                a = " ".join(a.split())
                out.append(BranchOutput((float(m),), f"quality judge: {a}"))
        return out
