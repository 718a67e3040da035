"""Hedging, as a third-party side branch (registry kind ``branch``) for the ``srm`` reward scorer.

A branch is a class with ``compute(items) -> list[BranchOutput]`` registered with ``@register("branch", name,
config=...)``; its constructor takes the config dataclass. ``srm`` then accepts it by name:
``lifelong reward train --scorer srm --set 'branches=[semantic,style,hedging]'``.

The feature: how much an answer hedges ("maybe", "I think", "not sure", ...): a hedging answer to a factual
question is usually the weaker one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from lifelong import register
from lifelong.scorers.branches import Branch, BranchOutput

HEDGES = ("maybe", "perhaps", "possibly", "i think", "i believe", "not sure", "might be", "could be", "probably")


@dataclass
class HedgingConfig:
    """``hedges``: the phrases that count as hedging (matched as whole words, case ignored)."""

    hedges: list[str] = field(default_factory=lambda: list(HEDGES))

    def validate(self) -> None:
        if not self.hedges or not all(isinstance(h, str) and h.strip() for h in self.hedges):
            raise ValueError("hedges must be a non-empty list of non-empty phrases")


@register("branch", "hedging", config=HedgingConfig, summary="hedging phrases in the response (example plugin)")
class HedgingBranch(Branch):
    """Counts hedging phrases: per 10 words, and whether the answer opens with one."""

    feature_names = ("hedges_per_10_words", "opens_with_hedge")

    def __init__(self, config: HedgingConfig) -> None:
        self.config = config
        self._patterns = [re.compile(rf"\b{re.escape(h.lower())}\b") for h in config.hedges]

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}/{'|'.join(sorted(h.lower() for h in self.config.hedges))}"

    def compute(self, items: Sequence[tuple[str, str]]) -> list[BranchOutput]:
        out = []
        for _, response in items:
            low = response.lower()
            found = [h for h, pat in zip(self.config.hedges, self._patterns) for _ in pat.finditer(low)]
            n_words = max(1, len(low.split()))
            opens = any(pat.match(low.lstrip()) for pat in self._patterns)
            text = f"hedging: {len(found)} hedge(s)" + (f" ({', '.join(sorted(set(found)))})" if found else "")
            out.append(BranchOutput((10.0 * len(found) / n_words, 1.0 if opens else 0.0), text))
        return out
