"""The scorer contract: what a reward scorer (kind ``scorer``) is, as ``editing/editor.py`` is for editors and
``incremental/learner.py`` for strategies.

A scorer is registered with ``@register("scorer", NAME, config=SomeConfig)`` on a factory (usually the class) that
takes the typed config. It is reached only through the registry, never imported by name: ``lifelong reward train``
builds one with ``create("scorer", NAME, ...)`` and calls its ``fit(pairs)`` and ``save(folder)``; ``reward score``
and ``reward eval`` read the scorer name that the saved folder's ``config.json`` records (key ``scorer``, read by
``read_meta``) and call ``load(folder)`` on that scorer's registered factory (a classmethod when the factory is a
class). The loaded scorer needs ``score(prompt, response)``, which returns a ``ScoreResult`` (``reward``,
``contributions``, ``branch_texts`` and ``as_dict()``), and ``evaluate(pairs)``. A scorer whose factory says
``trains_nothing`` (``grm``) may be named instead of a folder: ``reward eval --model grm`` builds it with its
default config.

A saved folder is written whole, through ``lifelong.platform.atomic.atomic_folder``, so a crash leaves the old
model or the new one; ``read_meta`` first settles what a killed save left beside the folder.

The contract is a ``typing.Protocol`` (structural, as Avalanche's ``strategy_mixin_protocol.py``): a scorer from
another package needs no base class, only these methods. The built-in ones are ``srm`` and ``scalar-rm``
(``srm.py``, on the engine in ``reward_model.py``) and ``grm`` (``grm.py``).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

from lifelong.platform.atomic import recover_folder
from lifelong.platform.errors import UserError
from lifelong.platform.registry import RegistryError, get

#: the file of a saved scorer folder that names the scorer (key ``scorer``) and holds its config
CONFIG_FILE = "config.json"
TRAIN_HINT = "make one with `lifelong reward train`"


class Pair(Protocol):
    """A preference pair as a scorer reads it (``benchmarks.preferences.PreferencePair`` is one): ``chosen`` is
    preferred over ``rejected`` as an answer to ``prompt``; ``dimension`` labels what the pair tests, if anything."""

    prompt: str
    chosen: str
    rejected: str
    dimension: str | None


@dataclass
class ScoreResult:
    """A reward with its explanation: each term's contribution (they sum to ``reward``) and the branch texts."""

    reward: float
    contributions: dict[str, float]
    branch_texts: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``lifelong reward score --json`` prints."""
        return {"reward": self.reward, "contributions": self.contributions, "branch_texts": self.branch_texts}


@runtime_checkable
class Scorer(Protocol):
    """What ``lifelong reward train | score | eval`` call on a scorer (see the module docstring)."""

    #: True: nothing is learned from pairs (``fit`` only records them); the name alone stands for a model
    trains_nothing: ClassVar[bool]

    def fit(self, pairs: Sequence[Pair]) -> dict[str, Any]:
        """Train on the pairs; the summary has ``n_pairs``, ``seconds``, ``train_accuracy`` and ``final_loss``
        (None for the last two when ``trains_nothing``)."""
        ...

    def score(self, prompt: str, response: str) -> ScoreResult:
        """The reward of one response and why (a scorer that only compares refuses in one line)."""
        ...

    def evaluate(self, pairs: Sequence[Pair]) -> dict[str, Any]:
        """Pairwise accuracy (``accuracy``, ``n_pairs``, ``per_dimension``), and whatever else the scorer reports."""
        ...

    def save(self, out: str | os.PathLike) -> Path:
        """Write the scorer's folder (``config.json`` naming it, plus its weights) atomically; returns ``out``."""
        ...

    @classmethod
    def load(cls, folder: str | os.PathLike, **overrides: Any) -> "Scorer":
        """Read back a folder written by ``save``; ``overrides`` replace config keys (e.g. ``device``)."""
        ...


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a saved scorer folder, with a non-empty ``scorer`` name; anything else is a one-line
    ``UserError`` naming the folder and what is wrong. What a killed save left beside it is settled first."""
    folder = Path(folder)
    recover_folder(folder)
    if not folder.is_dir():
        problem = "it does not exist" if not folder.exists() else "it is not a folder"
        raise UserError(f"{folder}: not a trained reward model ({problem}; {TRAIN_HINT})")
    meta_path = folder / CONFIG_FILE
    if not meta_path.is_file():
        raise UserError(f"{folder}: not a trained reward model (no {CONFIG_FILE}; {TRAIN_HINT})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{folder}: not a trained reward model ({CONFIG_FILE} cannot be read: {exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{folder}: not a trained reward model ({CONFIG_FILE} is not valid JSON: {exc.msg})") from None
    except RecursionError:
        raise UserError(f"{folder}: not a trained reward model ({CONFIG_FILE} is nested too deeply to read)") from None
    name = meta.get("scorer") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise UserError(f"{folder}: not a trained reward model ({CONFIG_FILE} names no scorer; {TRAIN_HINT})")
    return meta


def load_scorer(folder: str | os.PathLike, *, allow_unverified: bool = False, **overrides: Any) -> Scorer:
    """The scorer saved in ``folder``, loaded by the registered scorer its ``config.json`` names (``srm``,
    ``scalar-rm``, ``grm`` or another package's); ``overrides`` replace config keys (e.g. ``device="cpu"``). A folder
    that is not a saved scorer, or one saved by a scorer that is not installed, is a one-line UserError.
    ``allow_unverified`` is passed to a ``load`` that takes it (one that checks its weights against a checksum)."""
    folder = Path(folder)
    name = read_meta(folder)["scorer"]
    try:
        spec = get("scorer", name)
    except RegistryError as exc:
        raise UserError(f"{folder}: saved by a scorer that is not installed: {exc}") from None
    load = getattr(spec.factory, "load", None)
    if not callable(load):
        raise UserError(f"{folder}: scorer {name!r} ({spec.module}) has no load(folder), so it cannot be read back")
    if allow_unverified and "allow_unverified" in inspect.signature(load).parameters:
        overrides["allow_unverified"] = True
    return load(folder, **overrides)
