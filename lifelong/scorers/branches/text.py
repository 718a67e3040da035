"""The branches that read text with a sentence encoder or by rule: ``semantic``, ``style``, ``fact-check``.

- ``semantic``: relevance of the response to the prompt (cosine of all-MiniLM-L6-v2 sentence embeddings);
- ``style``: length, repetition, capitals, punctuation, filler, and whether an explicit format request in the
  prompt (one word, a list, a complete sentence) is followed;
- ``fact-check``: agreement with a knowledge source (facts JSON Lines files and/or the active edits of an
  EditStore): the fact nearest to the prompt, and whether the response states its target.

The sentence encoder is the process-wide shared one (``lifelong.adapters.lm.model_pool``), loaded on the branch's
``device``. The device is not part of a branch's fingerprint: the outputs are the same up to floating-point
rounding, so the cache is shared across devices.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lifelong.adapters.lm.model_pool import DEFAULT_ENCODER, Device, encode
from lifelong.benchmarks.preferences import BUNDLED_FACTS, load_facts
from lifelong.editing.store import EditStore
from lifelong.platform.registry import register
from lifelong.scorers.branches.base import Branch, BranchOutput, Item, sentences, states, words


@dataclass
class SemanticConfig:
    """``encoder``: the sentence encoder; ``device``: where it runs (filled in by the scorer)."""

    encoder: str = DEFAULT_ENCODER
    device: str = "cpu"


@register("branch", "semantic", config=SemanticConfig,
          summary="relevance: sentence-encoder cosine of prompt and response (whole and best sentence)")
class SemanticBranch(Branch):
    """Relevance of the response to the prompt from sentence embeddings."""

    name = "semantic"
    feature_names = ("cosine", "best_sentence_cosine")

    def __init__(self, config: SemanticConfig | None = None) -> None:
        self.config = config or SemanticConfig()
        self.encoder = self.config.encoder
        self.device: Device = self.config.device

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}/{self.encoder}"

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        sents = [sentences(r) or [r] for _, r in items]
        texts = sorted({p for p, _ in items} | {r for _, r in items} | {s for ss in sents for s in ss})
        index = {t: i for i, t in enumerate(texts)}
        emb = encode(texts, self.encoder, device=self.device)
        out = []
        for (p, r), ss in zip(items, sents):
            q = emb[index[p]]
            cos = float(emb[index[r]] @ q)
            best = float(max(emb[index[s]] @ q for s in ss))
            label = "on-topic" if cos >= 0.5 else "loosely related" if cos >= 0.3 else "off-topic"
            out.append(BranchOutput((cos, best), f"semantic: the response is {label} (similarity {cos:.2f})"))
        return out


_FILLER = ("great question", "glad you asked", "happy to help", "i hope this helps", "hope this helps",
           "let me know if", "feel free to ask", "as an ai", "have a wonderful day", "thank you for asking")


def _format_request(prompt: str) -> str | None:
    p = prompt.lower()
    if re.search(r"\b(one|a single) word\b", p):
        return "one-word"
    if re.search(r"\b(bullet(ed)? (list|points)|as a list|in a list|list of)\b", p):
        return "list"
    if re.search(r"\b(complete|full|whole) sentence\b", p):
        return "sentence"
    return None


@dataclass
class StyleConfig:
    """The style branch is rule-based: it has no options."""


@register("branch", "style", config=StyleConfig,
          summary="surface style and format-following rules (length, repetition, capitals, filler, requests)")
class StyleBranch(Branch):
    """Surface style: length, repetition, shouting, punctuation, filler, and format requests followed."""

    name = "style"
    feature_names = ("log_words", "distinct_bigrams", "repeated_sentences", "upper_fraction", "exclamations",
                     "terminal_punct", "starts_upper", "filler", "format_match")

    def __init__(self, config: StyleConfig | None = None) -> None:
        self.config = config or StyleConfig()

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        return [self._one(p, r) for p, r in items]

    def _one(self, prompt: str, response: str) -> BranchOutput:
        w = words(response)
        n = len(w)
        bigrams = list(zip(w, w[1:]))
        distinct = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
        sents = [s.lower() for s in sentences(response)]
        repeated = (len(sents) - len(set(sents))) / len(sents) if sents else 0.0
        letters = [c for c in response if c.isalpha()]
        upper = sum(c.isupper() for c in letters) / len(letters) if letters else 0.0
        excl = response.count("!") / max(1, len(sents))
        stripped = response.rstrip()
        terminal = 1.0 if stripped[-1:] in ".!?" else 0.0
        starts = 1.0 if (stripped.lstrip("-*• ")[:1].isupper()) else 0.0
        low = response.lower()
        filler = float(sum(low.count(f) for f in _FILLER))
        request = _format_request(prompt)
        bullets = sum(1 for line in response.splitlines() if re.match(r"\s*([-*•]|\d+[.)])\s+", line))
        if request == "one-word":
            match = 1.0 if n <= 3 else -1.0
        elif request == "list":
            match = 1.0 if bullets >= 2 else -1.0
        elif request == "sentence":
            match = 1.0 if n >= 4 and terminal else -1.0
        else:
            match = 0.0
        feats = (math.log1p(n), distinct, repeated, upper, excl, terminal, starts, filler, match)
        notes = [f"{n} words"]
        if repeated > 0 or distinct < 0.8:
            notes.append("repetitive")
        if upper > 0.5:
            notes.append("shouting in capitals")
        if filler:
            notes.append("filler phrases")
        if not terminal:
            notes.append("no closing punctuation")
        if request:
            notes.append(f"asked for {request}: {'followed' if match > 0 else 'not followed'}")
        return BranchOutput(feats, "style: " + "; ".join(notes))


def fact_file(spec: str) -> str:
    """A facts source as a path: ``"bundled"`` is the bundled preference set's fact list, anything else a file."""
    return str(BUNDLED_FACTS) if spec == "bundled" else spec


@dataclass
class FactCheckConfig:
    """``facts``: fact JSON Lines files (``"bundled"``: the bundled fact list); ``store``: an EditStore folder whose
    active edits are facts too; ``fact_threshold``: the least cosine between prompt and fact that counts as a match."""

    facts: list[str] = field(default_factory=list)
    store: str | None = None
    encoder: str = DEFAULT_ENCODER
    fact_threshold: float = 0.6
    device: str = "cpu"

    def validate(self) -> None:
        if not 0.0 <= self.fact_threshold <= 1.0:
            raise ValueError(f"fact_threshold must be in [0, 1], got {self.fact_threshold}")
        for f in self.facts:
            if f != "bundled" and not Path(f).is_file():
                raise ValueError(f"facts: file {f} not found")
        if self.store is not None and not Path(self.store).is_dir():
            raise ValueError(f"store: {self.store} is not an edit store folder")


@register("branch", "fact-check", config=FactCheckConfig,
          summary="agreement with a knowledge source (fact files, an EditStore's active edits)")
class FactCheckBranch(Branch):
    """Agreement with a knowledge source: the fact nearest to the prompt, and whether the response states it.

    ``facts`` are JSON Lines files (``"bundled"``: the bundled fact list); ``store`` an EditStore folder.
    """

    name = "fact-check"
    feature_names = ("match_similarity", "states_target", "contradicts")

    def __init__(self, config: FactCheckConfig | None = None) -> None:
        self.config = config or FactCheckConfig()
        self.fact_files = [fact_file(str(f)) for f in self.config.facts]
        self.store = self.config.store
        self.encoder = self.config.encoder
        self.threshold = self.config.fact_threshold
        self.device: Device = self.config.device
        self._kb: list[tuple[str, str, list[str]]] | None = None  # (prompt, target, match texts)
        self._kb_emb: Any = None
        self._kb_owner: list[int] = []
        self._lock = threading.Lock()

    def knowledge(self) -> list[tuple[str, str, list[str]]]:
        """The facts (prompt, target, texts to match against), read once: files first, then active edits."""
        with self._lock:
            if self._kb is None:
                kb: list[tuple[str, str, list[str]]] = []
                for path in self.fact_files:
                    for f in load_facts(path):
                        question = f.extra.get("question")
                        kb.append((f.prompt, f.target, [f.prompt] + ([question] if isinstance(question, str) else [])))
                if self.store:
                    store = EditStore.open(self.store, create=False)
                    try:
                        for rec in store.active_edits():
                            kb.append((rec.prompt, rec.target, [rec.prompt]))
                    finally:
                        store.close()
                texts = [t for _, _, ts in kb for t in ts]
                self._kb_owner = [i for i, (_, _, ts) in enumerate(kb) for _ in ts]
                self._kb_emb = encode(texts, self.encoder, device=self.device)
                self._kb = kb
            return self._kb

    def fingerprint(self) -> str:
        kb = self.knowledge()
        h = hashlib.sha256(json.dumps([[p, t, ts] for p, t, ts in kb]).encode()).hexdigest()[:16]
        return f"{super().fingerprint()}/{self.encoder}/{self.threshold}/{h}"

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        import numpy as np

        kb = self.knowledge()
        if not kb:
            return [BranchOutput((0.0, 0.0, 0.0), "fact-check: no knowledge source") for _ in items]
        prompts = sorted({p for p, _ in items})
        q = encode(prompts, self.encoder, device=self.device)
        sims = q @ self._kb_emb.T  # (prompts, texts)
        owner = np.asarray(self._kb_owner)
        best: dict[str, tuple[int, float]] = {}
        for i, p in enumerate(prompts):
            j = int(np.argmax(sims[i]))
            best[p] = (int(owner[j]), float(sims[i, j]))
        out = []
        for p, r in items:
            k, sim = best[p]
            fact_prompt, target, _ = kb[k]
            if sim < self.threshold:
                out.append(BranchOutput((0.0, 0.0, 0.0), "fact-check: no known fact about this prompt"))
            elif states(r, target):
                out.append(BranchOutput((sim, 1.0, 0.0),
                                        f"fact-check: known fact '{fact_prompt} {target}'; the response states it"))
            else:
                out.append(BranchOutput((sim, 0.0, 1.0),
                                        f"fact-check: known fact '{fact_prompt} {target}'; the response does not state '{target}'"))
        return out
