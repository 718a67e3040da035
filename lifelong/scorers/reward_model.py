"""The reward model behind the ``srm`` and ``scalar-rm`` scorers: encoder + additive head + Bradley-Terry.

The text part embeds ``prompt / response / branch texts`` joined into one string with a frozen sentence encoder
(all-MiniLM-L6-v2) and scores it with a small MLP; each branch's standardised features get their own linear
term. The reward is the sum of these terms, so every dimension's contribution is reported and they add up to
the reward exactly. ``scalar-rm`` is the same model with no branches (only the text term over prompt and
response). The side branches that produce the branch texts and features are in ``lifelong.scorers.branches``;
docs/reward.md describes the model and its saved folder.

``backbone=lm`` replaces the sentence encoder and MLP of the text term by a causal language model with LoRA and a
scalar head on the last token (``lifelong.scorers.lm_backbone``), trained end to end with the same loss; the
branch terms are unchanged. Its saved weights are the LoRA and the head only (the frozen base is named by its
identity in ``config.json``).

Saved folder (``save`` / ``load``): ``config.json`` (format version, the registered scorer name, its config,
the branches and their feature names, training summary, and ``head_sha256``, the SHA-256 of the weights file)
and ``head.safetensors`` (the head's weights). The folder is written whole by ``lifelong.platform.atomic.
atomic_folder`` (a temporary sibling, fsynced, swapped with an existing model in one step), so a crash leaves the
old model or the new one, never a mix. ``load`` refuses (one line) a weights file that does not match
``head_sha256`` (a changed byte, a truncated file, weights from another save) and weights that are not all finite;
``save`` refuses non-finite weights (a diverged training) before writing anything. The scorer contract these
models follow (``fit``, ``score``, ``evaluate``, ``save``, ``load``) is ``lifelong.scorers.base``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lifelong.adapters.lm.model_pool import encode
from lifelong.platform.atomic import atomic_folder, atomic_write_text, atomic_write_with, file_sha256
from lifelong.platform.config import to_dict
from lifelong.platform.device import LossScaler, autocast, resolve_device
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create
from lifelong.scorers.branches import CACHE_FILE, BranchCache, default_cache_path, make_branches, run_branches
from lifelong.scorers.base import CONFIG_FILE, ScoreResult, read_meta
from lifelong.scorers.lm_backbone import LMBackbone

FORMAT_VERSION = 1
TEXT_TERM = "text"
HEAD_FILE = "head.safetensors"


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log σ(s_chosen − s_rejected): the negative log-likelihood of the preferences under Bradley-Terry."""
    return -nn.functional.logsigmoid(chosen - rejected).mean()


class RewardHead(nn.Module):
    """Text MLP plus one linear term per branch over standardised features; returns the per-term scores."""

    def __init__(self, embed_dim: int, branch_dims: dict[str, int], hidden: int, dropout: float,
                 text: nn.Module | None = None) -> None:
        super().__init__()
        self.branch_names = list(branch_dims)
        # ``text`` replaces the MLP over sentence embeddings (the LM backbone: its inputs are then LM batches)
        self.text = text if text is not None else nn.Sequential(
            nn.Dropout(dropout), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
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

    def frozen_names(self) -> set[str]:
        """Parameters that are never trained (the LM backbone's base weights): not saved, rebuilt on load."""
        return {n for n, p in self.named_parameters() if not p.requires_grad}

    def saved_state(self) -> dict[str, torch.Tensor]:
        """What ``save`` writes: every tensor of the state except the frozen base weights."""
        frozen = self.frozen_names()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def terms_batched(self, emb: Any, feats: dict[str, torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
        """``terms`` over ``n`` rows in chunks of ``batch_size`` (an LM backbone cannot take every response at once)."""
        if isinstance(emb, torch.Tensor):  # sentence embeddings: all rows at once
            return self.terms(emb, feats)
        out = [self.terms(emb[range(s, min(n, s + batch_size))], {k: v[s:s + batch_size] for k, v in feats.items()})
               for s in range(0, n, batch_size)]
        return torch.cat(out)


@dataclass
class _Features:
    emb: torch.Tensor
    feats: dict[str, torch.Tensor]
    texts: dict[str, list[str]]


class RewardModel:
    """A trainable, savable reward model; ``scorer`` is its registry name, ``config`` its typed config.

    ``RewardModel.load(folder)`` reads back a folder written by ``save``. It follows the ``Scorer`` contract
    (``lifelong.scorers.base``).
    """

    #: a reward model learns from the pairs: a folder written by ``save`` stands for it, not its name
    trains_nothing = False

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
            device=self.device, branch_config=getattr(config, "branch_config", None))
        #: ``encoder`` (frozen sentence encoder + MLP) or ``lm`` (causal LM + LoRA + head, ``lm_backbone``)
        self.backbone: str = getattr(config, "backbone", "encoder")
        self.lm: LMBackbone | None = None
        if self.backbone == "lm":
            self.lm = LMBackbone(config.llm, self.device, lora_layers=config.lora_layers, lora_rank=config.lora_rank,
                                 lora_alpha=config.lora_alpha, dropout=config.dropout, max_length=config.max_length,
                                 batch_size=getattr(config, "llm_batch_size", 16))
        cache_dir = config.cache_dir
        path = Path(cache_dir) / CACHE_FILE if cache_dir else default_cache_path()
        self.cache = BranchCache(path if cache_dir != ":memory:" else None)
        self.head: RewardHead | None = None
        self.scaler: LossScaler | None = None  # the last fit's loss scaler (its scale shows fp16 was used)
        self.training: dict[str, Any] = {}

    @property
    def join_texts(self) -> bool:
        return bool(getattr(self.config, "join_texts", False)) and bool(self.branches)

    @property
    def feature_terms(self) -> bool:
        """Whether each branch's numeric features enter the reward as a linear term (``branch_features``)."""
        return bool(getattr(self.config, "branch_features", True)) and bool(self.branches)

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
        emb = self.lm.inputs(joined) if self.lm is not None else self._embed(joined)
        feats = {n: torch.tensor([o.features for o in outs[n]], dtype=torch.float32, device=self.device)
                 .reshape(len(items), -1) for n in self.branch_names} if self.feature_terms else {}
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
        head = self._new_head(dims, None if self.lm is not None else f.emb.shape[1])
        head.set_standardisation(f.feats)
        epochs, lr = (cfg.lm_epochs, cfg.lm_lr) if self.lm is not None else (cfg.epochs, cfg.lr)
        groups: list[dict[str, Any]] = [{"params": [p for n, p in head.named_parameters()
                                                    if p.requires_grad and not n.startswith("branches.")], "lr": lr}]
        if self.lm is not None and head.branch_names:
            # with the LM backbone the few steps at lm_lr would leave the branch terms at their random start (a
            # random-signed vote on strong features): they start at zero and learn at the encoder head's lr
            for lin in head.branches.values():
                nn.init.zeros_(lin.weight)
            groups.append({"params": list(head.branches.parameters()), "lr": cfg.lr})
        else:
            groups[0]["params"] += list(head.branches.parameters())
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
        precision = getattr(cfg, "precision", "fp32")
        scaler = LossScaler(precision, self.device)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        head.train()
        losses = []
        for _ in range(epochs):
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
            terms = head.terms_batched(f.emb, f.feats, 2 * n, cfg.batch_size)
            head.term_offsets.copy_(terms.mean(0))
            s = (terms - head.term_offsets).sum(1)
        self.training = {
            "n_pairs": n,
            "final_loss": float(np.mean(losses[-max(1, n // cfg.batch_size):])),
            "train_accuracy": float((s[:n] > s[n:]).float().mean()),
            "feature_seconds": round(feature_time, 2),
            "seconds": round(time.perf_counter() - start, 2),
        }
        return dict(self.training)

    def _new_head(self, dims: dict[str, int], embed_dim: int | None) -> RewardHead:
        """A fresh head on the model's device: the encoder MLP over ``embed_dim``, or the LM text term."""
        cfg = self.config
        if self.lm is not None:
            return RewardHead(0, dims, cfg.hidden, cfg.dropout, text=self.lm.new_text_term()).to(self.device)
        return RewardHead(int(embed_dim or 0), dims, cfg.hidden, cfg.dropout).to(self.device)

    # ------------------------------------------------------------------ scoring
    def _require_head(self) -> RewardHead:
        if self.head is None:
            raise UserError(f"scorer {self.scorer!r} is not trained: train it first (lifelong reward train)")
        return self.head

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[ScoreResult]:
        """Rewards with per-term contributions for many (prompt, response) pairs."""
        head = self._require_head()
        if not items:
            return []
        f = self.featurize(items)
        with torch.no_grad():
            terms = head.terms_batched(f.emb, f.feats, len(items), self.config.batch_size).cpu()  # one copy to the host
        names = [TEXT_TERM] + head.branch_names  # no branch terms with branch_features=false
        out = []
        for i in range(len(items)):
            contrib = {n: float(terms[i, j]) for j, n in enumerate(names)}
            out.append(ScoreResult(float(terms[i].sum()), contrib, {n: f.texts[n][i] for n in self.branch_names}))
        return out

    def score(self, prompt: str, response: str) -> ScoreResult:
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
        bad = [k for k, v in head.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise UserError(f"the trained reward head has non-finite weights ({', '.join(bad)}): the training "
                            "diverged; nothing was saved (lower lr, or check the data)")
        config = to_dict(self.config)
        config.pop("device", None)  # where it ran is not part of the model: it loads on any device
        meta = {
            "format_version": FORMAT_VERSION,
            "scorer": self.scorer,
            "config": config,
            "branches": {b.name: list(b.feature_names) for b in self.branches},
            "embed_dim": int(head.text[1].in_features) if self.lm is None else None,
            "training": self.training,
        }
        if self.lm is not None:
            meta["base_model"] = self.lm.identity()
        state = {k: v.detach().cpu().contiguous() for k, v in head.saved_state().items()}

        with atomic_folder(out, what="--out") as tmp:
            # the weights first: config.json, which names the scorer and holds the weights' checksum, is what makes
            # the folder a model
            atomic_write_with(tmp / HEAD_FILE, lambda t: save_file(state, str(t), metadata={"scorer": self.scorer}))
            meta["head_sha256"] = file_sha256(tmp / HEAD_FILE)
            atomic_write_text(tmp / CONFIG_FILE, json.dumps(meta, indent=2))
        return out

    @classmethod
    def read_meta(cls, folder: str | os.PathLike) -> dict[str, Any]:
        """The ``config.json`` of a saved reward model (the contract's ``read_meta``, then this format's checks:
        the weights file is there and the format version is this one); anything else is a one-line UserError."""
        folder = Path(folder)
        meta = read_meta(folder)
        if not (folder / HEAD_FILE).is_file():
            raise UserError(f"{folder}: not a trained reward model (needs {CONFIG_FILE} and {HEAD_FILE}; "
                            "make one with `lifelong reward train`)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{folder / CONFIG_FILE}: not a reward model config of format version {FORMAT_VERSION}")
        _check_meta_types(meta, folder / CONFIG_FILE)
        return meta

    @classmethod
    def load(cls, folder: str | os.PathLike, *, allow_unverified: bool = False, **overrides: Any) -> "RewardModel":
        """A trained model read back from a folder written by ``save``; ``overrides`` replace config keys (e.g.
        ``device``). The model is rebuilt through the registry under the scorer name the folder records.
        ``allow_unverified`` loads a folder whose config records no ``head_sha256`` (see ``load_weights``)."""
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
        model.load_weights(folder, meta, allow_unverified=allow_unverified)
        return model

    def load_weights(self, folder: Path, meta: dict[str, Any], *, allow_unverified: bool = False) -> None:
        """The head's weights, checked against ``head_sha256`` and for finiteness. A config without the checksum
        is refused unless ``allow_unverified``: deleting one field must not turn the integrity check off (a
        tampered head whose checksum was then removed used to load and score)."""
        from safetensors.torch import load_file

        path = folder / HEAD_FILE
        want = meta.get("head_sha256")  # absent in folders saved before it was recorded, or removed by hand
        if want is None and not allow_unverified:
            raise UserError(f"{folder / CONFIG_FILE}: records no head_sha256, so {HEAD_FILE} cannot be checked (a "
                            "folder saved before the checksum, or one whose checksum was removed); retrain it with "
                            "`lifelong reward train`, or pass --allow-unverified to load it unchecked")
        if want is not None and file_sha256(path) != want:
            raise UserError(f"{path}: does not match the checksum recorded in {CONFIG_FILE} (a damaged or "
                            "truncated file, or weights from another save); retrain it with `lifelong reward train`")
        dims = {n: len(v) for n, v in meta.get("branches", {}).items()} if self.feature_terms else {}
        if self.lm is not None:
            want_base, have_base = meta.get("base_model") or {}, self.lm.identity()
            if want_base.get("weights_sha256") != have_base["weights_sha256"]:
                raise UserError(f"{folder}: trained on base model {want_base.get('name')!r} "
                                f"(weights {str(want_base.get('weights_sha256'))[:12]}), but {self.config.llm!r} "
                                f"has weights {have_base['weights_sha256'][:12]}: load it with the same llm")
        try:
            embed_dim = None if self.lm is not None else int(meta["embed_dim"])
            if embed_dim is not None and not 1 <= embed_dim <= 1 << 16:  # before a head of that size is allocated
                raise ValueError(f"embed_dim {embed_dim} is not a sentence encoder's width (1 to 65536)")
            head = self._new_head(dims, embed_dim)
            state = load_file(str(path))
            missing, unexpected = head.load_state_dict(state, strict=False)
            if unexpected or set(missing) - head.frozen_names():
                raise ValueError(f"unexpected keys {unexpected[:3]}, missing {sorted(set(missing) - head.frozen_names())[:3]}")
        except Exception as exc:  # safetensors' own error type included: any unreadable head is one line
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{path}: cannot load the reward head ({text})") from None
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise UserError(f"{path}: the reward head has non-finite weights (NaN or inf in {', '.join(bad)}); "
                            "retrain it with `lifelong reward train`")
        head.eval()
        self.head = head.to(self.device)
        self.training = dict(meta.get("training", {}))


def _check_meta_types(meta: dict[str, Any], path: Path) -> None:
    """The fields ``load`` reads have the types ``save`` writes (a hand-edited config with ``"config": null``
    or ``"branches": "x"`` was a TypeError traceback); anything else is one line naming the field."""
    expected = {"config": (dict,), "branches": (dict,), "training": (dict,), "head_sha256": (str,),
                "base_model": (dict,), "embed_dim": (int,)}
    for key, types in expected.items():
        value = meta.get(key)
        nullable = key in ("head_sha256", "base_model", "embed_dim")  # save writes null for what a model lacks
        if key in meta and not (value is None and nullable) and (not isinstance(value, types) or
                                                                 isinstance(value, bool)):
            raise UserError(f"{path}: field {key!r} must be {'an object' if types == (dict,) else types[0].__name__}"
                            f", got {json.dumps(value, default=str)[:40]}")
    for name, features in (meta.get("branches") or {}).items():
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise UserError(f"{path}: field 'branches' must map each branch to a list of feature names, got "
                            f"{json.dumps({name: features}, default=str)[:60]}")
