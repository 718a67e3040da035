"""The edit store's router bookkeeping: its ``Router`` (``editing/router.py``) kept in step with its rows.

One ``StoreRouter`` per open ``EditStore``. The store's meta value ``keys_checksum`` is an XOR, over the active
keyed rows, of a hash of each row's id and key (``key_hash``), so an add or a rollback moves it without a scan
(``moved``). The store calls ``record`` inside the write transaction that changes the rows: the checksum moves in
the database and, when the in-memory index was in step before the change, the index follows it (add or remove the
keys) before the commit. Otherwise (another process wrote in between, or a key of another size) the index is
marked out of step and ``current`` brings it back: it loads the index file when that file was built from rows
with the store's checksum, else rebuilds it from the rows (checking them against the checksum) and saves it.

The ``Router`` object is the same for the store's whole life: editors hold it (``Editor.bind_router``), so a
rebuild or a change of metric happens in place. ``EditSession`` asks for ``current`` through
``EditStore.refresh_router`` whenever the rows may have moved (after its own write, and when the store's version
shows another writer's); nothing refreshes the router as a side effect of reading it.

The index file is only a cache: it is written after a rebuild, by ``save`` and when the store closes, and a crash
anywhere leaves either the old file (its checksum no longer the store's after a committed change, so it is
rebuilt) or a file that matches. Before the file is used it is checked against the rows: the checksum it was
built from, the number of active keyed rows and their key size, and its own size and SHA-256 (``Router.read``);
a file that differs in any of them is rebuilt from the rows, and faiss never reads a damaged one.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import sys
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Sequence

import numpy as np

from lifelong.editing.router import METRICS, Router
from lifelong.editing.store_db import read_snapshot
from lifelong.editing.store_schema import StoreError, corrupted, get_meta, set_meta
from lifelong.platform.errors import one_line, os_error_message

ZERO_CHECKSUM = "0" * 64
_ACTIVE_KEYS = "FROM edits NOT INDEXED WHERE status = 'active' AND key IS NOT NULL"


def key_hash(edit_id: int, key: bytes) -> int:
    """The hash of one row's id and key that the keys checksum XORs together."""
    return int.from_bytes(hashlib.sha256(int(edit_id).to_bytes(8, "little") + key).digest(), "little")


def keys_checksum_of(rows: Iterable[tuple[int, bytes]]) -> str:
    """The keys checksum of ``(id, key)`` rows, computed from scratch."""
    acc = 0
    for id_, key in rows:
        acc ^= key_hash(id_, key)
    return f"{acc:064x}"


def check_metric(metric: str | None) -> None:
    """Refuse a router metric that is not one of ``METRICS`` (one line naming the allowed values)."""
    if metric is not None and metric not in METRICS:
        raise StoreError(f"router metric {metric!r} is not allowed; allowed values: {', '.join(METRICS)}")


def moved(before: str, added: Sequence[tuple[int, bytes]] = (), removed: Sequence[tuple[int, bytes]] = ()) -> str:
    """The keys checksum after adding and removing these ``(id, key)`` rows (XOR: adding and removing are alike)."""
    acc = int(before, 16)
    for id_, key in (*added, *removed):
        acc ^= key_hash(id_, key)
    return f"{acc:064x}"


class StoreRouter:
    """The router of record of one open store, in step with the rows' keys checksum; see the module docstring."""

    def __init__(self, folder: Path, db: Path, metric: str, *, conn: Callable[[], sqlite3.Connection],
                 lock: Callable[[], ContextManager[None]], readonly: bool) -> None:
        """``conn`` gives the store's open connection; ``lock`` is the store's file lock (the index file is
        written under it)."""
        self.folder, self.db, self.readonly = folder, db, readonly
        self._conn, self._lock = conn, lock
        self.router = Router(metric)
        self.held: str | None = None  # the keys checksum the in-memory index holds (None: out of step)
        self.saved: str | None = None  # the checksum of the index file on disk, as far as we know

    def checksum(self) -> str:
        """The keys checksum of the store's active rows (one meta value)."""
        return get_meta(self._conn(), "keys_checksum") or ZERO_CHECKSUM

    @staticmethod
    def ensure_checksum(conn: sqlite3.Connection) -> None:
        """Inside the open's write transaction: compute the keys checksum of a store that has none (a full scan,
        once per store: stores made before it was recorded)."""
        if get_meta(conn, "keys_checksum") is None:
            set_meta(conn, "keys_checksum", keys_checksum_of(conn.execute(f"SELECT id, key {_ACTIVE_KEYS}")))

    def update(self, added: Sequence[tuple[int, bytes]] = (), removed: Sequence[tuple[int, bytes]] = ()) -> None:
        """Inside the write transaction that adds or rolls back these ``(id, key)`` rows: move the keys checksum
        and, if it was in step, the in-memory index (``record``)."""
        before = self.checksum()
        after = moved(before, added, removed)
        set_meta(self._conn(), "keys_checksum", after)
        self.record(before, after, added, removed)

    def _shape(self) -> dict[str, int]:
        """How many active keyed rows there are and their key size (-1 for mixed sizes: no file can match)."""
        count, low, high = self._conn().execute(
            "SELECT COUNT(*), MIN(key_dim), MAX(key_dim) FROM edits WHERE status = 'active' AND key IS NOT NULL"
        ).fetchone()
        return {"count": int(count), "dim": int(low) if low == high and low is not None else -1}

    def key_rows(self) -> tuple[str, list[tuple[int, bytes, int]]]:
        """``(checksum, rows)`` of the active keyed rows in one read snapshot; a row is ``(id, key, key_dim)``."""
        conn = self._conn()
        with read_snapshot(conn):
            return self.checksum(), conn.execute(f"SELECT id, key, key_dim {_ACTIVE_KEYS} ORDER BY id").fetchall()

    def follow_metric(self, metric: str) -> None:
        """Make the in-memory router use ``metric`` (in place: editors hold this object); emptied if it changes."""
        if self.router.metric != metric:
            self.router.build([], np.zeros((0, 1), np.float32))
            self.router.metric = metric
            self.held = None

    def record(self, before: str, after: str, added: Sequence[tuple[int, bytes]] = (),
               removed: Sequence[tuple[int, bytes]] = ()) -> None:
        """Inside the write transaction that moved the checksum from ``before`` to ``after``: move the in-memory
        index with it if it was in step, else leave it out of step for ``current``."""
        if self.held != before:
            self.held = None  # out of step already (another writer): rebuilt by the next current()
            return
        try:
            if removed:
                self.router.remove(i for i, _ in removed)
            if added:
                keys = np.stack([np.frombuffer(k, dtype=np.float32) for _, k in added])
                self.router.add([i for i, _ in added], keys)
        except (ValueError, RuntimeError):
            self.held = None  # e.g. a key of another size: the rebuild reports it
            return
        self.held = after

    def current(self, metric: str) -> Router:
        """The router, in step with the rows: as it is, loaded from the index file when that was built from rows
        with the store's checksum, or rebuilt from the rows (and saved)."""
        self.follow_metric(metric)
        with read_snapshot(self._conn()):
            checksum, shape = self.checksum(), self._shape()
        if self.held == checksum and not self.router.needs_rebuild():
            return self.router
        if self.held != checksum and self.router.read(self.folder, checksum, **shape):
            self.held = self.saved = checksum
            if not self.router.needs_rebuild():
                return self.router
        self.rebuild()
        return self.router

    def rebuild(self) -> None:
        """Build the index from the active rows, after checking their keys against the stored checksum; save it."""
        checksum, rows = self.key_rows()
        if keys_checksum_of((id_, key) for id_, key, _ in rows) != checksum:
            raise corrupted(self.db, "the active keys do not match their checksum")
        dims = {int(d) for _, _, d in rows}
        if len(dims) > 1:
            raise StoreError(f"edit store {self.folder} holds keys of sizes {sorted(dims)}; the router needs one size")
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        keys = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                if rows else np.zeros((0, 1), np.float32))
        del rows
        self.router.build(ids, keys)
        self.held = checksum
        self.save()

    def save(self) -> None:
        """Write the in-memory index beside the store, under the store's lock (a no-op out of step or on a
        read-only store: the index is rebuilt next time). A failed write (a full disk) leaves the old file, which
        no longer matches the rows' checksum and is rebuilt from them by the next open; the rows are committed,
        so the command goes on, with one warning line on stderr saying so (never a traceback)."""
        if self.held is None or self.readonly:
            return
        try:
            with self._lock():
                self.router.write(self.folder, self.held)
            self.saved = self.held
        except OSError as exc:
            why = one_line(os_error_message(exc, "could not write the router index", self.folder))
            print(f"lifelong: warning: {why}; the edits are committed and the index is rebuilt from them when the "
                  "store is next opened", file=sys.stderr, flush=True)

    def save_if_changed(self) -> None:
        """Before the store closes: write the index if this process changed it and it is still the rows'."""
        if not self.readonly and self.held is not None and self.held != self.saved:
            with contextlib.suppress(sqlite3.Error):
                if self.held == self.checksum():
                    self.save()
