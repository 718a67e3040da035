"""Branch names to branch objects, through the plugin registry (kind ``branch``).

Every branch, built-in or from another package, is registered with ``@register("branch", name, config=...)``;
``make_branches`` looks each name up, builds its typed config from the scorer-wide ``BranchSettings`` (each
setting goes to the config field of the same name, when the config has one) overlaid with that branch's own
options (``branch_config[name]``), validates it, and calls the registered factory with it. ``BRANCH_NAMES`` are
the five built-in branches in their canonical order; ``branch_names()`` is every registered branch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL
from lifelong.adapters.lm.model_pool import DEFAULT_ENCODER, Device
from lifelong.platform.config import build_config
from lifelong.platform.errors import UserError
from lifelong.platform.registry import PluginSpec, get, list_plugins
from lifelong.scorers.branches.base import Branch, BranchSettings
from lifelong.scorers.branches.llm import FluencyBranch, QualityBranch
from lifelong.scorers.branches.text import FactCheckBranch, SemanticBranch, StyleBranch

BRANCH_TYPES: tuple[type[Branch], ...] = (SemanticBranch, FactCheckBranch, StyleBranch, FluencyBranch, QualityBranch)
BRANCH_NAMES: tuple[str, ...] = tuple(t.name for t in BRANCH_TYPES)


def branch_names() -> tuple[str, ...]:
    """Every registered branch: the built-in ones in canonical order, then the others by name."""
    registered = {s.name for s in list_plugins("branch")}
    return tuple(n for n in BRANCH_NAMES if n in registered) + tuple(sorted(registered - set(BRANCH_NAMES)))


def branch_spec(name: str) -> PluginSpec:
    """The registry entry of branch ``name``; an unknown name is a UserError listing the registered ones."""
    known = branch_names()
    if name not in known:
        raise UserError(f"unknown branch {name!r}; allowed values: {', '.join(known)}")
    return get("branch", name)


def build_branch_config(name: str, settings: BranchSettings | None = None,
                  options: Mapping[str, Any] | None = None) -> Any:
    """The typed, validated config of branch ``name``: ``settings`` fill the fields they share with it, then
    ``options`` (this branch's own keys) override; an unknown key or a bad value raises ``ConfigError``."""
    spec = branch_spec(name)
    if spec.config is None:
        if options:
            raise UserError(f"branch {name!r} takes no options, got {', '.join(options)}")
        return None
    fields = {f.name for f in dataclasses.fields(spec.config)}
    values: dict[str, Any] = {}
    if settings is not None:
        for f in dataclasses.fields(settings):
            if f.name in fields:
                v = getattr(settings, f.name)
                values[f.name] = str(v) if f.name == "device" else list(v) if f.name == "facts" else v
    values.update(options or {})
    return build_config(spec.config, values, prefix=f"{name}.")


def make_branches(names: Sequence[str], *, encoder: str = DEFAULT_ENCODER, llm: str = DEFAULT_MODEL,
                  facts: Sequence[str] = (), store: str | None = None, fact_threshold: float = 0.6,
                  batch_size: int = 16, device: Device = "cpu",
                  branch_config: Mapping[str, Mapping[str, Any]] | None = None) -> list[Branch]:
    """Build the named branches in order; the ones that run a model run it on ``device``.

    ``facts`` are fact JSON Lines files or ``"bundled"``; ``store`` an EditStore folder (both for ``fact-check``).
    ``branch_config`` maps a branch name to its own options (keys of its config class).
    """
    settings = BranchSettings(encoder=encoder, llm=llm, facts=list(facts), store=store,
                              fact_threshold=fact_threshold, batch_size=batch_size, device=device)
    options = dict(branch_config or {})
    stray = [k for k in options if k not in names]
    if stray:
        raise UserError(f"branch_config: options for branch {stray[0]!r}, which branches does not name ({list(names)})")
    out: list[Branch] = []
    for name in names:
        spec = branch_spec(name)
        config = build_branch_config(name, settings, options.get(name))
        branch = spec.factory(config) if spec.config is not None else spec.factory()
        if not isinstance(branch, Branch):
            raise UserError(f"branch {name!r} ({spec.module}): its factory returned {type(branch).__name__}, "
                            "not a Branch")
        branch.name = name
        out.append(branch)
    return out
