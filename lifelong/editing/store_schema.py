"""The edit store's database: its schema, the upgrades of older stores, and the integrity checks.

This module changes when the table layout or a seal changes; ``editing/store.py`` (rows, adapter files, the editor
spec, rollback, reconcile) and ``editing/store_router.py`` (the router kept in step with the rows) use it. Every
function takes the store's open ``sqlite3.Connection``; those that write expect to run inside the caller's write
transaction (``EditStore._write_txn``), so an upgrade or a seal is committed with the change it belongs to.

Integrity (schema 3): ``quick_check`` runs SQLite's ``PRAGMA quick_check`` (the structure of every page) at open;
every row carries ``row_sha256`` over its fixed fields (all but the status, which must be one of its two values,
and the rollback time), checked whenever a row is read; the meta values are sealed by ``meta_sha256``, checked at
open. Stores of schema 1 and 2 are upgraded by the first writable open (rows and meta sealed as they are); schema
1 recorded the router metric ``ip`` whatever the editor, so its metric is taken from the editor's name
(``LEGACY_METRICS``).

The ``pending`` table is the store's manifest of the adapter files it is writing: a name goes in (committed) before
its file is written and leaves in the transaction that inserts the file's row, so after a crash the store knows
which files without a row are its own (``EditStore.reconcile`` removes those and nothing else). A store of
schema 3 made before the table existed gets it at its first writable open (``CREATE TABLE IF NOT EXISTS``); the
leftovers of its earlier crashes, if any, are then never removed, since nothing shows they are the store's.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lifelong.platform.errors import UserError

SCHEMA_VERSION = 3
#: metric of stores made before the editor's metric was recorded (schema 1), by editor name; others: "ip"
LEGACY_METRICS = {"sola": "ip", "grace": "l2", "ft-l": "l2"}

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    target TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    editor TEXT NOT NULL,
    editor_config TEXT NOT NULL DEFAULT '{}',
    layer TEXT NOT NULL DEFAULT '',
    key BLOB,
    key_dim INTEGER NOT NULL DEFAULT 0,
    adapter_file TEXT,
    adapter_sha256 TEXT,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'rolled_back')),
    created_at REAL NOT NULL,
    rolled_back_at REAL,
    row_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS edits_status ON edits(status);
CREATE TABLE IF NOT EXISTS pending (file TEXT PRIMARY KEY, created_at REAL NOT NULL);
"""

#: the columns of a row, in the order ``row_sha256`` hashes them and ``EditStore`` reads them
COLUMNS = (
    "id, uid, prompt, target, extra, editor, editor_config, layer, key, key_dim, adapter_file, "
    "adapter_sha256, status, created_at, rolled_back_at, row_sha256"
)
#: the same for a store of schema 1 or 2 read as it is (no row checksums)
LEGACY_COLUMNS = COLUMNS.replace("row_sha256", "NULL AS row_sha256")


class StoreError(UserError):
    """A store that cannot be used as asked (wrong model, unknown edit, corrupted file)."""


class UnknownEditError(StoreError):
    """An edit id the store does not hold (the server answers 404 for this one only)."""


class StoreFullError(StoreError):
    """A write that the disk had no room for (``ENOSPC``, ``EDQUOT``, SQLite's ``SQLITE_FULL``); the write's
    transaction was rolled back, so the store is as it was before it (the server answers 507)."""


def corrupted(db: Path, what: str) -> StoreError:
    """The one-line error for a damaged database file: what did not match, and what to do."""
    return StoreError(f"edit store database {db} is corrupted ({what}); restore it from a backup")


def row_sha256(row: Sequence[Any]) -> str:
    """SHA-256 of the fixed fields of a row in ``COLUMNS`` order: everything but ``status``, ``rolled_back_at``
    (rollback changes them; ``status`` is checked against its two values) and the hash itself."""
    h = hashlib.sha256()
    for value in (*row[:12], row[13]):
        if value is None:
            part = b"n"
        elif isinstance(value, bytes):
            part = b"b" + value
        elif isinstance(value, str):
            part = b"s" + value.encode("utf-8", "surrogatepass")
        else:
            part = b"r" + repr(value).encode()
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """One meta value (None when absent)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def meta_seal(conn: sqlite3.Connection) -> str:
    """The SHA-256 over every meta value but the seal itself."""
    rows = conn.execute("SELECT key, value FROM meta WHERE key != 'meta_sha256' ORDER BY key").fetchall()
    # a damaged file may turn a text value into a number or a blob: sealed as such, it no longer matches
    rows = [[x if isinstance(x, str) else f"{type(x).__name__}:{x!r}" for x in row] for row in rows]
    return hashlib.sha256(json.dumps(rows).encode("utf-8", "surrogatepass")).hexdigest()


def seal_meta(conn: sqlite3.Connection) -> None:
    """Inside a write transaction: record the SHA-256 of every other meta value (checked at open)."""
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('meta_sha256', ?)", (meta_seal(conn),))


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Inside a write transaction: set one meta value and re-seal them all."""
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
    seal_meta(conn)


def verify_meta(conn: sqlite3.Connection, db: Path) -> None:
    """Refuse a store whose meta values no longer match their seal (a damaged file: a changed byte in the
    editor's config or the model's identity must not go unnoticed)."""
    if get_meta(conn, "meta_sha256") != meta_seal(conn):
        raise corrupted(db, "its meta data does not match its checksum")


def quick_check(conn: sqlite3.Connection, db: Path) -> None:
    """``PRAGMA quick_check`` (every page's structure, not the values): a damaged file is refused at open."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise corrupted(db, f"SQLite quick_check: {rows[0][0]}")


def schema_version(conn: sqlite3.Connection, db: Path) -> int:
    """The store's schema version (0 for a database that has none yet)."""
    raw = get_meta(conn, "schema_version")
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise corrupted(db, f"schema_version {raw!r}") from None


def legacy_metric(conn: sqlite3.Connection) -> str | None:
    """The router metric of a schema-1 store, from its editor's name (None while it has no editor)."""
    raw = get_meta(conn, "editor")
    return LEGACY_METRICS.get(json.loads(raw)["name"], "ip") if raw else None


def create_or_upgrade(conn: sqlite3.Connection, db: Path, metric: str | None) -> None:
    """Inside a write transaction: create the tables of a new store (with ``metric``, the router metric of a store
    used without an editor), or bring an older one up to ``SCHEMA_VERSION``."""
    for stmt in SCHEMA_SQL.strip().split(";"):
        if stmt.strip():
            conn.execute(stmt)
    if get_meta(conn, "meta_sha256") is not None:  # sealed (schema 3 on): check before anything is migrated
        verify_meta(conn, db)
    version = schema_version(conn, db)
    if version == 0:
        set_meta(conn, "schema_version", str(SCHEMA_VERSION))
        set_meta(conn, "created_at", repr(time.time()))
        if metric is not None:
            set_meta(conn, "metric", metric)
    if 0 < version < 2:  # schema 1: "metric" was always "ip"; take the editor's (module docstring)
        metric_of_editor = legacy_metric(conn)
        if metric_of_editor is not None:
            set_meta(conn, "metric", metric_of_editor)
        else:
            conn.execute("DELETE FROM meta WHERE key = 'metric'")
    if 0 < version < 3:  # schema 2: no row checksums; seal the rows and the fixed meta as they are now
        cols = {r[1] for r in conn.execute("PRAGMA table_info(edits)")}
        if "row_sha256" not in cols:
            conn.execute("ALTER TABLE edits ADD COLUMN row_sha256 TEXT")
        for row in conn.execute(f"SELECT {COLUMNS} FROM edits").fetchall():
            conn.execute("UPDATE edits SET row_sha256 = ? WHERE id = ?", (row_sha256(row), row[0]))
        set_meta(conn, "schema_version", str(SCHEMA_VERSION))
        seal_meta(conn)


def seal_rows(conn: sqlite3.Connection, first_id: int) -> None:
    """Inside the insert's transaction: record the checksum of every new row from ``first_id`` on."""
    rows = conn.execute(f"SELECT {COLUMNS} FROM edits WHERE id >= ? AND row_sha256 IS NULL", (first_id,)).fetchall()
    conn.executemany("UPDATE edits SET row_sha256 = ? WHERE id = ?", ((row_sha256(r), r[0]) for r in rows))


def check_row(row: Sequence[Any], db: Path) -> None:
    """Refuse a row whose status is not one of its two values or whose fields no longer match ``row_sha256``
    (a row of a legacy store read as it is has no checksum to check)."""
    status, sealed = row[12], row[15]
    if status not in ("active", "rolled_back") or sealed is not None and sealed != row_sha256(row):
        raise corrupted(db, f"the row of edit {row[0]} does not match its checksum")


@dataclass
class EditRecord:
    """One row of the store: what was edited, by which editor, where its weights and key are."""

    id: int
    uid: str
    prompt: str
    target: str
    status: str
    editor: str
    layer: str = ""
    editor_config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    key: np.ndarray | None = None
    adapter_file: str | None = None
    adapter_sha256: str | None = None
    created_at: float = 0.0
    rolled_back_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (without the key vector)."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "target": self.target,
            "status": self.status,
            "editor": self.editor,
            "layer": self.layer,
            "adapter_file": self.adapter_file,
            "adapter_sha256": self.adapter_sha256,
            "created_at": self.created_at,
            "rolled_back_at": self.rolled_back_at,
            "extra": self.extra,
        }


def row_to_record(row: Sequence[Any], db: Path) -> EditRecord:
    """A row (``COLUMNS``) as an EditRecord, after checking its checksum (a damaged row is refused, never used)."""
    check_row(row, db)
    (id_, uid, prompt, target, extra, editor, econf, layer, key, _dim, afile, asha, status, cat, rat, _sha) = row
    vec = np.frombuffer(key, dtype=np.float32).copy() if key is not None else None
    return EditRecord(
        id=int(id_), uid=uid, prompt=prompt, target=target, status=status, editor=editor, layer=layer,
        editor_config=json.loads(econf), extra=json.loads(extra), key=vec, adapter_file=afile,
        adapter_sha256=asha, created_at=float(cat), rolled_back_at=rat,
    )
