"""The reward model behind the ``srm`` and ``scalar-rm`` scorers: encoder + additive head + Bradley-Terry.

The text part embeds ``prompt / response / branch texts`` joined into one string with a frozen sentence encoder
(all-MiniLM-L6-v2) and scores it with a small MLP; each branch's standardised features get their own linear
term. The reward is the sum of these terms, so every dimension's contribution is reported and they add up to
the reward exactly. ``scalar-rm`` is the same model with no branches (only the text term over prompt and
response). The side branches that produce the branch texts and features are in ``lifelong.scorers._branches``;
docs/reward.md describes the model and its saved folder.

Saved folder (``save`` / ``load``): ``config.json`` (format version, the registered scorer name, its config,
the branches and their feature names, training summary) and ``head.safetensors`` (the head's weights). A new
folder is written as a whole under a temporary name and renamed into place; into an existing folder each file is
replaced atomically, the weights first and ``config.json`` last. Every write goes through
``lifelong.platform.atomic`` (fsync of files and folders), so a failed save leaves no half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lifelong.adapters.encoders import encode
from lifelong.platform.atomic import atomic_write_text, atomic_write_with, fsync_dir
from lifelong.platform.config import to_dict
from lifelong.platform.device import LossScaler, autocast, resolve_device
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create
from lifelong.scorers._branches import CACHE_FILE, BranchCache, default_cache_path, make_branches, run_branches

FORMAT_VERSION = 1
TEXT_TERM = "text"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log σ(s_chosen − s_rejected): the negative log-likelihood of the preferences under Bradley-Terry."""
    return -nn.functional.logsigmoid(chosen - rejected).mean()


class RewardHead(nn.Module):
    """Text MLP plus one linear term per branch over standardised features; returns the per-term scores."""

    def __init__(self, embed_dim: int, branch_dims: dict[str, int], hidden: int, dropout: float) -> None:
        super().__init__()
        self.branch_names = list(branch_dims)
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.branches = nn.ModuleDict({n: nn.Linear(d, 1, bias=False) for n, d in branch_dims.items()})
        # each term's mean over the training responses: subtracted, so a contribution reads "above / below an
        # average training response" (Bradley-Terry is shift invariant, so this changes no preference)
        self.register_buffer("term_offsets", torch.zeros(1 + len(branch_dims)))
        for n, d in branch_dims.items():
            self.register_buffer(f"mean_{n.replace('-', '_')}", torch.zeros(d))
            self.register_buffer(f"std_{n.replace('-', '_')}", torch.ones(d))

    def set_standardisation(self, feats: dict[str, torch.Tensor]) -> None:
        for n, x in feats.items():
            getattr(self, f"mean_{n.replace('-', '_')}").copy_(x.mean(0))
            getattr(self, f"std_{n.replace('-', '_')}").copy_(x.std(0, unbiased=False).clamp_min(1e-3))

    def terms(self, emb: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, 1 + branches): the text term first, then each branch's term, in ``branch_names`` order."""
        cols = [self.text(emb)]
        for n in self.branch_names:
            key = n.replace("-", "_")
            z = (feats[n] - getattr(self, f"mean_{key}")) / getattr(self, f"std_{key}")
            cols.append(self.branches[n](z))
        return torch.cat(cols, dim=1) - self.term_offsets

    def forward(self, emb: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.terms(emb, feats).sum(1)


@dataclass
class RewardResult:
    """A reward with its explanation: each term's contribution (they sum to ``reward``) and the branch texts."""

    reward: float
    contributions: dict[str, float]
    branch_texts: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "contributions": self.contributions, "branch_texts": self.branch_texts}


@dataclass
class _Features:
    emb: torch.Tensor
    feats: dict[str, torch.Tensor]
    texts: dict[str, list[str]]


class RewardModel:
    """A trainable, savable reward model; ``scorer`` is its registry name, ``config`` its typed config.

    ``RewardModel.load(folder)`` reads back a folder written by ``save``.
    """

    def __init__(self, scorer: str, config: Any) -> None:
        self.scorer = scorer
        self.config = config
        #: where the encoder, the branch models, the features and the head live
        self.device: torch.device = resolve_device(getattr(config, "device", "auto"))
        self.branch_names: list[str] = list(getattr(config, "branches", []))
        self.branches = make_branches(
            self.branch_names, encoder=config.encoder, llm=getattr(config, "llm", "smollm2-135m"),
            facts=list(getattr(config, "facts", [])), store=getattr(config, "store", None),
            fact_threshold=getattr(config, "fact_threshold", 0.6), batch_size=getattr(config, "llm_batch_size", 16),
            device=self.device)
        cache_dir = config.cache_dir
        path = Path(cache_dir) / CACHE_FILE if cache_dir else default_cache_path()
        self.cache = BranchCache(path if cache_dir != ":memory:" else None)
        self.head: RewardHead | None = None
        self.scaler: LossScaler | None = None  # the last fit's loss scaler (its scale shows fp16 was used)
        self.training: dict[str, Any] = {}

    @property
    def join_texts(self) -> bool:
        return bool(getattr(self.config, "join_texts", False)) and bool(self.branches)

    # ------------------------------------------------------------------ features
    def featurize(self, items: Sequence[tuple[str, str]], parallel: bool | None = None) -> _Features:
        """Branch outputs (cached) and the encoder embedding of the joined text, for each (prompt, response)."""
        parallel = getattr(self.config, "parallel", True) if parallel is None else parallel
        outs = run_branches(self.branches, items, self.cache, parallel=parallel)
        texts = {n: [o.text for o in outs[n]] for n in self.branch_names}
        joined = []
        for i, (p, r) in enumerate(items):
            parts = [f"Prompt: {p}", f"Response: {r}"]
            if self.join_texts:
                parts += [texts[n][i] for n in self.branch_names]
            joined.append("\n".join(parts))
        emb = self._embed(joined)
        feats = {n: torch.tensor([o.features for o in outs[n]], dtype=torch.float32, device=self.device)
                 .reshape(len(items), -1) for n in self.branch_names}
        return _Features(emb, feats, texts)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Encoder embeddings of ``texts`` on the model's device, through the cache (rounded to 6 decimals)."""
        ns = f"encoder/{self.config.encoder}"
        keys = [BranchCache.key(ns, t, "") for t in texts]
        hit = self.cache.get_many(keys)
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in hit}.values())  # first of each
        fresh = {}
        if todo:
            vecs = encode([texts[i] for i in todo], self.config.encoder, device=self.device)
            fresh = {keys[i]: json.dumps([round(float(x), 6) for x in v]) for i, v in zip(todo, vecs)}
            self.cache.put_many(fresh)
        rows = [json.loads(fresh.get(k) or hit[k]) for k in keys]
        return torch.tensor(np.asarray(rows, dtype=np.float32), device=self.device)

    # ------------------------------------------------------------------ training
    def fit(self, pairs: Sequence[Any]) -> dict[str, Any]:
        """Train the head with the Bradley-Terry loss on ``pairs`` (objects with prompt, chosen, rejected).

        The head's forward and loss run under ``config.precision`` (autocast; fp16 through a GradScaler), its
        weights stay float32. The head is initialised and the batches shuffled on the CPU's generator, so a seed
        gives the same draws on every device.
        """
        if not pairs:
            raise UserError("no preference pairs to train on")
        cfg = self.config
        start = time.perf_counter()
        items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
        f = self.featurize(items)
        n = len(pairs)
        feature_time = time.perf_counter() - start
        torch.manual_seed(cfg.seed)
        dims = {k: v.shape[1] for k, v in f.feats.items()}
        head = RewardHead(f.emb.shape[1], dims, cfg.hidden, cfg.dropout).to(self.device)
        head.set_standardisation(f.feats)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        precision = getattr(cfg, "precision", "fp32")
        scaler = LossScaler(precision, self.device)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        head.train()
        losses = []
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen).to(self.device)
            for s in range(0, n, cfg.batch_size):
                idx = perm[s:s + cfg.batch_size]
                both = torch.cat([idx, idx + n])
                with autocast(precision, self.device):
                    scores = head(f.emb[both], {k: v[both] for k, v in f.feats.items()}).float()
                    loss = bradley_terry_loss(scores[: len(idx)], scores[len(idx):])
                opt.zero_grad()
                scaler.backward(loss)
                scaler.step(opt)
                losses.append(float(loss.detach()))
        self.scaler = scaler
        head.eval()
        self.head = head
        with torch.no_grad():
            head.term_offsets.copy_(head.terms(f.emb, f.feats).mean(0))
            s = head(f.emb, f.feats)
        self.training = {
            "n_pairs": n,
            "final_loss": float(np.mean(losses[-max(1, n // cfg.batch_size):])),
            "train_accuracy": float((s[:n] > s[n:]).float().mean()),
            "feature_seconds": round(feature_time, 2),
            "seconds": round(time.perf_counter() - start, 2),
        }
        return dict(self.training)

    # ------------------------------------------------------------------ scoring
    def _require_head(self) -> RewardHead:
        if self.head is None:
            raise UserError(f"scorer {self.scorer!r} is not trained: train it first (lifelong reward train)")
        return self.head

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        """Rewards with per-term contributions for many (prompt, response) pairs."""
        head = self._require_head()
        if not items:
            return []
        f = self.featurize(items)
        with torch.no_grad():
            terms = head.terms(f.emb, f.feats).cpu()  # one copy to the host, not one per number
        names = [TEXT_TERM] + self.branch_names
        out = []
        for i in range(len(items)):
            contrib = {n: float(terms[i, j]) for j, n in enumerate(names)}
            out.append(RewardResult(float(terms[i].sum()), contrib, {n: f.texts[n][i] for n in self.branch_names}))
        return out

    def score(self, prompt: str, response: str) -> RewardResult:
        """The reward of one response and why: contributions per dimension and the branch texts."""
        return self.score_many([(prompt, response)])[0]

    def evaluate(self, pairs: Sequence[Any]) -> dict[str, Any]:
        """Pairwise accuracy (chosen scored strictly higher), overall and per labelled dimension."""
        if not pairs:
            raise UserError("no preference pairs to evaluate")
        res = self.score_many([(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs])
        n = len(pairs)
        wins = [res[i].reward > res[n + i].reward for i in range(n)]
        per: dict[str, list[bool]] = {}
        for p, w in zip(pairs, wins):
            if p.dimension:
                per.setdefault(p.dimension, []).append(w)
        return {
            "accuracy": float(np.mean(wins)),
            "n_pairs": n,
            "per_dimension": {d: {"accuracy": float(np.mean(v)), "n_pairs": len(v)} for d, v in sorted(per.items())},
        }

    # ------------------------------------------------------------------ saving
    def save(self, out: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``head.safetensors`` into ``out`` atomically (see the module docstring)."""
        from safetensors.torch import save_file

        head = self._require_head()
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a directory")
        config = to_dict(self.config)
        config.pop("device", None)  # where it ran is not part of the model: it loads on any device
        meta = {
            "format_version": FORMAT_VERSION,
            "scorer": self.scorer,
            "config": config,
            "branches": {b.name: list(b.feature_names) for b in self.branches},
            "embed_dim": int(head.text[1].in_features),
            "training": self.training,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}

        def write_into(folder: Path) -> None:
            # the weights first: config.json, which names the scorer, is what makes the folder a model
            atomic_write_with(folder / HEAD_FILE, lambda tmp: save_file(state, str(tmp), metadata={"scorer": self.scorer}))
            atomic_write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2))

        if out.is_dir():
            write_into(out)
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
        tmp.mkdir()
        try:
            write_into(tmp)  # each file fsynced, and the temporary folder's entries
            os.replace(tmp, out)
            fsync_dir(out.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def read_meta(cls, folder: str | os.PathLike) -> dict[str, Any]:
        """The ``config.json`` of a saved reward model; a folder that is not one raises a one-line UserError."""
        folder = Path(folder)
        meta_path = folder / CONFIG_FILE
        if not meta_path.is_file() or not (folder / HEAD_FILE).is_file():
            raise UserError(f"{folder}: not a trained reward model (needs {CONFIG_FILE} and {HEAD_FILE}; "
                            "make one with `lifelong reward train`)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{meta_path}: cannot read ({exc})") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{meta_path}: not valid JSON ({exc.msg})") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or "scorer" not in meta:
            raise UserError(f"{meta_path}: not a reward model config of format version {FORMAT_VERSION}")
        return meta

    @classmethod
    def load(cls, folder: str | os.PathLike, **overrides: Any) -> "RewardModel":
        """A trained model read back from a folder written by ``save``; ``overrides`` replace config keys (e.g.
        ``device``). The model is rebuilt through the registry under the scorer name the folder records."""
        folder = Path(folder)
        meta = cls.read_meta(folder)
        config = dict(meta.get("config", {}))
        config.update(overrides)
        model = create("scorer", meta["scorer"], **config)
        if not isinstance(model, cls):
            raise UserError(f"{folder}: a saved {meta['scorer']!r} scorer, not a {cls.__name__}")
        if list(meta.get("branches", {})) != list(getattr(model.config, "branches", [])):
            raise UserError(f"{folder / CONFIG_FILE}: the saved branches {list(meta.get('branches', {}))} "
                            "do not match the config")
        model.load_weights(folder, meta)
        return model

    def load_weights(self, folder: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        dims = {n: len(v) for n, v in meta.get("branches", {}).items()}
        head = RewardHead(int(meta["embed_dim"]), dims, self.config.hidden, self.config.dropout)
        try:
            state = load_file(str(folder / HEAD_FILE))
            head.load_state_dict(state)
        except (OSError, RuntimeError, ValueError) as exc:
            raise UserError(f"{folder / HEAD_FILE}: cannot load the reward head ({exc})") from None
        head.eval()
        self.head = head.to(self.device)
        self.training = dict(meta.get("training", {}))
