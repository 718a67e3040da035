"""Branch names to branch objects: the one list of built-in branches, in their canonical order.

Each branch class carries its own ``name`` and builds itself from ``BranchSettings`` (``Branch.build``), so the
names are defined once, on the classes, and ``BRANCH_NAMES`` is read off ``BRANCH_TYPES``.
"""

from __future__ import annotations

from typing import Sequence

from lifelong.adapters.encoders import DEFAULT_ENCODER, Device
from lifelong.adapters.llm import DEFAULT_MODEL
from lifelong.platform.errors import UserError
from lifelong.scorers._branches.base import Branch, BranchSettings
from lifelong.scorers._branches.llm import FluencyBranch, QualityBranch
from lifelong.scorers._branches.text import FactCheckBranch, SemanticBranch, StyleBranch

BRANCH_TYPES: tuple[type[Branch], ...] = (SemanticBranch, FactCheckBranch, StyleBranch, FluencyBranch, QualityBranch)
BRANCH_NAMES: tuple[str, ...] = tuple(t.name for t in BRANCH_TYPES)
_BY_NAME: dict[str, type[Branch]] = {t.name: t for t in BRANCH_TYPES}


def make_branches(names: Sequence[str], *, encoder: str = DEFAULT_ENCODER, llm: str = DEFAULT_MODEL,
                  facts: Sequence[str] = (), store: str | None = None, fact_threshold: float = 0.6,
                  batch_size: int = 16, device: Device = "cpu") -> list[Branch]:
    """Build the named branches in order; the ones that run a model run it on ``device``.

    ``facts`` are fact JSON Lines files or ``"bundled"``; ``store`` an EditStore folder (both for ``fact-check``).
    """
    settings = BranchSettings(encoder=encoder, llm=llm, facts=list(facts), store=store,
                              fact_threshold=fact_threshold, batch_size=batch_size, device=device)
    out: list[Branch] = []
    for name in names:
        cls = _BY_NAME.get(name)
        if cls is None:
            raise UserError(f"unknown branch {name!r}; allowed values: {', '.join(BRANCH_NAMES)}")
        out.append(cls.build(settings))
    return out
