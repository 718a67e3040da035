"""What every side branch shares: the ``Branch`` interface, its ``BranchOutput``, the on-disk cache of outputs,
the runner that computes only the uncached pairs and runs branches in parallel threads, and the text helpers.

A branch takes ``(prompt, response)`` pairs and returns, for each, a ``BranchOutput``: a few numbers (its
dimension's features) and a short text (the auxiliary text that the SRM paper's side-branch models write and
the reward model reads; docs/reward.md). Outputs are cached on disk (SQLite) by SHA-256 of (branch
fingerprint, prompt, response), so a pair is computed once per branch configuration; branches run in parallel
threads (torch releases the GIL inside its kernels).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL, cache_root
from lifelong.adapters.lm.model_pool import DEFAULT_ENCODER, Device

Item = tuple[str, str]  # (prompt, response)
CACHE_FILE = "srm-branches.sqlite"


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


@dataclass
class BranchSettings:
    """The scorer-wide settings every branch may share: a branch's config receives each one it has a field of
    the same name for (``encoder``, ``llm``, ``facts``, ``store``, ``fact_threshold``, ``batch_size``, ``device``);
    per-branch options (``branch_config``) override them.

    ``facts`` are fact JSON Lines files or ``"bundled"`` (the bundled preference set's fact list); ``store`` is an
    EditStore folder whose active edits are facts too.
    """

    encoder: str = DEFAULT_ENCODER
    llm: str = DEFAULT_MODEL
    facts: Sequence[str] = field(default_factory=list)
    store: str | None = None
    fact_threshold: float = 0.6
    batch_size: int = 16
    device: Device = "cpu"


class Branch(ABC):
    """A side branch (registry kind ``branch``): ``compute`` maps (prompt, response) pairs to outputs, in order.

    A branch is registered with ``@register("branch", name, config=SomeConfig)`` on a factory (usually the class)
    that takes the config dataclass as its one argument. ``make_branches`` sets ``name`` to the registered name;
    ``feature_names`` names the numbers of every ``BranchOutput`` (the same count for every pair); bump
    ``version`` when the outputs change, and extend ``fingerprint`` with every option that changes them, so the
    on-disk cache never serves an output of another configuration.
    """

    name: str = ""
    feature_names: tuple[str, ...] = ()
    version: str = "1"

    def fingerprint(self) -> str:
        """Identifies the branch's configuration: a different fingerprint never reads another's cache."""
        return f"{self.name}/v{self.version}"

    @abstractmethod
    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        """Features and text for each (prompt, response)."""


# ---------------------------------------------------------------------------------------------- cache
def default_cache_path() -> Path:
    """``$LIFELONG_CACHE/srm-branches.sqlite`` (default ``~/.cache/lifelong``), shared by every SRM."""
    return cache_root() / CACHE_FILE


class BranchCache:
    """Branch outputs on disk, keyed by SHA-256 of (namespace, prompt, response); safe across threads.

    ``path=None`` keeps them in memory only.
    """

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


# ---------------------------------------------------------------------------------------------- runner
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


def sentences(text: str) -> list[str]:
    """The sentences (and lines) of ``text``, stripped, empty ones dropped."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
