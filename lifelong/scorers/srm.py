"""Structural Reward Model (SRM) and its scalar baseline, as the scorer plugins ``srm`` and ``scalar-rm``.

Paper: Liu, Liang, Dai et al., "Structural Reward Model: Enhancing Interpretability, Efficiency, and
Scalability in Reward Modeling", arXiv 2509.25361 (EMNLP 2025 Industry Track); no official code.

What is taken from the paper: side-branch models (SBMs), one per fine-grained dimension (semantic
understanding, fact-check, style matching, quality assessment), generate auxiliary text for (prompt,
response); the texts are joined with the prompt and response and scored by a light reward model trained with
the Bradley-Terry loss P(chosen ≻ rejected) = σ(s_c − s_r); branches are modular and run in parallel.

Where this departs or fills gaps the paper leaves open:
- The paper's SBMs are LLMs fine-tuned (LoRA) on best-of-N data judged by a strong LLM. No such data or model
  is available offline here, so the branches are real but untrained feature generators
  (``lifelong/scorers/branches/``): sentence-embedding relevance (``semantic``), agreement with a
  knowledge source, i.e. fact files and/or an EditStore's active edits (``fact-check``), surface and
  format-following features (``style``), the local LM's likelihood (``fluency``), and the local LM asked a
  judging question, its answer kept as text (``quality``). Each gives a short text and a few numbers.
  The generative SBMs the paper describes are built too, as separate branches (``sbm-*``,
  ``lifelong/scorers/branches/sbm.py`` and ``sbm_train.py``: the LM with one LoRA adapter per dimension, best-of-N
  by a reference-based judge, then SFT).
- The reward model reads the joined text through a frozen all-MiniLM-L6-v2 encoder and a small MLP (the
  paper fine-tunes a larger RM). The branch numbers enter as one linear term per branch, so the reward is an
  exact sum of per-dimension contributions (the text term plus one per branch): the "why" a user sees.
- Branches are plugins (registry kind ``branch``): ``branches=[...]`` names registered ones, so another package
  can add a dimension; the "entity background" branch reads WordNet (``entity-background``).
- ``scalar-rm`` is the same encoder and head with no branches, trained on the same pairs the same way.
- ``backbone=lm`` (both scorers) is the paper's language-model reward model: the causal LM (default SmolLM2-135M)
  reads the joined text, a scalar head on its last token gives the text term, and LoRA on its top layers is
  trained with the head (``lifelong/scorers/lm_backbone.py`` says where it departs). ``scalar-rm backbone=lm``
  and ``srm backbone=lm`` are then the paper's comparison: the same backbone without and with branch texts.

Python API (docs/reward.md)::

    rm = create("scorer", "srm", branches=["semantic", "style"])
    rm.fit(bundled_preferences("train")); rm.save("runs/srm")
    rm = load_scorer("runs/srm"); rm.score(prompt, response).contributions   # lifelong.scorers.base

This module holds only the two plugins and their configs. The engine they run on is ``reward_model.py`` (and
``lm_backbone.py`` for ``backbone=lm``), the side-branch API is ``lifelong.scorers.branches``, and the contract
both follow is ``lifelong.scorers.base``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong.platform.device import check_precision
from lifelong.platform.registry import register
from lifelong.scorers.branches import BranchSettings, branch_spec, build_branch_config
from lifelong.scorers.reward_model import RewardModel

__all__ = ["BACKBONES", "DEFAULT_BRANCHES", "SRMConfig", "ScalarRMConfig", "ScalarRewardModel", "StructuralRewardModel"]

# ``quality`` is opt-in: on CPU it is the slowest branch (a generation per response) and the 135M local model is
# a weak judge (bench/srm_compare.py measures what it adds); turn it on with branches=[..., quality].
DEFAULT_BRANCHES: tuple[str, ...] = ("semantic", "fact-check", "style", "fluency")


#: the text term's backbone: a frozen sentence encoder + MLP, or the causal LM with LoRA and a last-token head
BACKBONES: tuple[str, ...] = ("encoder", "lm")


MAX_HIDDEN = 1 << 16  # the widest text MLP a config may ask for (the default is 64)

def _check_common(cfg: Any) -> None:
    """The checks both configs share; like every config's ``validate``, a bad value raises ValueError."""
    check_precision(cfg.precision)
    if not isinstance(cfg.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, got {cfg.device!r}")
    if not 1 <= cfg.hidden <= MAX_HIDDEN:  # a saved config asking for millions would allocate gigabytes first
        raise ValueError(f"hidden must be from 1 to {MAX_HIDDEN}, got {cfg.hidden}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {cfg.backbone!r}")
    for key in ("lora_layers", "lora_rank", "lm_epochs"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lora_alpha <= 0 or cfg.lm_lr <= 0:
        raise ValueError(f"lora_alpha and lm_lr must be > 0, got {cfg.lora_alpha} and {cfg.lm_lr}")
    if cfg.max_length < 8:
        raise ValueError(f"max_length must be >= 8 tokens, got {cfg.max_length}")


@dataclass
class ScalarRMConfig:
    """The scalar baseline: frozen sentence encoder of prompt + response, MLP head, Bradley-Terry training."""

    encoder: str = "all-minilm-l6-v2"
    hidden: int = 64
    dropout: float = 0.1
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    seed: int = 0
    cache_dir: str | None = None  # None: $LIFELONG_CACHE (default ~/.cache/lifelong); ":memory:" for no disk cache
    #: where the encoder, the branch LMs and the head run: auto (CUDA when there is one), cpu, cuda, cuda:N.
    #: A property of the run, not of the model: it is not saved, so a model trained on a GPU loads anywhere.
    device: str = "auto"
    #: mixed precision of the head's training: fp32, bf16 or fp16 (lifelong.platform.device); the branches
    #: and the encoder stay float32, so their cached outputs do not depend on it
    precision: str = "fp32"
    #: ``encoder``: frozen sentence encoder + MLP; ``lm``: the causal LM ``llm`` with LoRA on its top
    #: ``lora_layers`` layers and a scalar head on the last token, trained for ``lm_epochs`` at ``lm_lr``
    #: (``epochs`` and ``lr`` are the encoder head's), reading at most ``max_length`` tokens
    backbone: str = "encoder"
    llm: str = "smollm2-135m"
    lora_layers: int = 4
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lm_epochs: int = 2
    lm_lr: float = 3e-4
    max_length: int = 256

    def validate(self) -> None:
        _check_common(self)


@dataclass
class SRMConfig(ScalarRMConfig):
    """SRM: the scalar model's encoder and head, plus side branches whose texts and features it reads."""

    branches: list[str] = field(default_factory=lambda: list(DEFAULT_BRANCHES))
    facts: list[str] = field(default_factory=lambda: ["bundled"])  # facts JSONL files; "bundled" = bundled list
    store: str | None = None  # an EditStore folder whose active edits the fact-check branch also reads
    llm: str = "smollm2-135m"  # for the fluency and quality branches (and the text term with backbone=lm)
    fact_threshold: float = 0.6
    join_texts: bool = True  # feed the branch texts to the encoder (the paper's joined input)
    #: one linear term per branch over its numeric features, added to the text term; with join_texts this makes
    #: three settings: both (default), texts only (branch_features=false), features only (join_texts=false)
    branch_features: bool = True
    parallel: bool = True  # run branches in parallel threads
    llm_batch_size: int = 16
    #: each branch's own options by branch name, keys of its config class (``--set branch_config.quality.
    #: max_new_tokens=4``); they override the scorer-wide keys above (``encoder``, ``llm``, ``facts``, ...)
    branch_config: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> BranchSettings:
        """The scorer-wide keys every branch's config may take its same-named fields from."""
        return BranchSettings(encoder=self.encoder, llm=self.llm, facts=list(self.facts), store=self.store,
                              fact_threshold=self.fact_threshold, batch_size=self.llm_batch_size, device="cpu")

    def validate(self) -> None:
        _check_common(self)
        for b in self.branches:
            branch_spec(b)  # an unknown name: one line listing the registered branches
        if len(set(self.branches)) != len(self.branches):
            raise ValueError(f"branches: each branch may appear once, got {self.branches}")
        if self.branches and not self.join_texts and not self.branch_features:
            raise ValueError("join_texts=false and branch_features=false leave the branches nothing to add; use "
                             "scalar-rm (or keep one of them)")
        if self.llm_batch_size < 1:
            raise ValueError(f"llm_batch_size must be >= 1, got {self.llm_batch_size}")
        if not 0.0 <= self.fact_threshold <= 1.0:
            raise ValueError(f"fact_threshold must be in [0, 1], got {self.fact_threshold}")
        stray = [k for k in self.branch_config if k not in self.branches]
        if stray:
            raise ValueError(f"branch_config: options for branch {stray[0]!r}, which branches does not name "
                             f"({self.branches})")
        for b in self.branches:  # every branch's config is built and checked before any work starts
            opts = self.branch_config.get(b) or {}
            if not isinstance(opts, dict):
                raise ValueError(f"branch_config.{b}: expected a mapping of options, got {opts!r}")
            build_branch_config(b, self.settings(), opts)


@register("scorer", "srm", config=SRMConfig,
          summary="Structural Reward Model: side branches (kind branch, e.g. semantic, fact-check, style) + BT head")
class StructuralRewardModel(RewardModel):
    """An untrained SRM (train with ``.fit(pairs)``); ``StructuralRewardModel.load(folder)`` reads a saved one."""

    def __init__(self, config: SRMConfig) -> None:
        if config.store is not None:
            config.store = str(Path(config.store).resolve())
        config.facts = [f if f == "bundled" else str(Path(f).resolve()) for f in config.facts]
        super().__init__("srm", config)


@register("scorer", "scalar-rm", config=ScalarRMConfig,
          summary="scalar reward model baseline: same encoder and head as srm, no side branches")
class ScalarRewardModel(RewardModel):
    """An untrained scalar reward model; ``ScalarRewardModel.load(folder)`` reads a saved one."""

    def __init__(self, config: ScalarRMConfig) -> None:
        super().__init__("scalar-rm", config)

