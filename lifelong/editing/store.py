"""The EditStore: a durable, revocable registry of model edits in one directory (user guide: ``docs/editing.md``).

Layout of a store directory::

    edits.sqlite          the single source of truth: one row per edit, the store's meta data (WAL mode)
    adapters/<uid>.safetensors   one file per edit (its LoRA / codebook value / weight delta)
    router.json, router-<checksum>.faiss
                                 the router of record (``editing/router.py``): a faiss index over the active edits'
                                 keys with the editor's metric, and the checksum of the rows it was built from;
                                 loaded when that checksum is the store's, else rebuilt from the rows
    .lock                        advisory lock that serialises the "write file, commit row" step

Applying an edit is atomic: its tensors are written to a temporary file, fsynced and renamed to their final
name, and only then is the row committed. A crash before the commit leaves at most a file that no row names;
opening the store removes such orphans (under the lock, so a concurrent writer's file in flight is never
taken). Rollback marks the row ``rolled_back`` and drops its key from the router; rolling back twice is a no-op.
Concurrent writers are serialised by SQLite's busy timeout and the lock; no edit is lost.

The router is kept in step with the rows inside the same SQLite transaction: every add and rollback updates the
``keys_checksum`` meta value (an XOR, over the active keyed rows, of a hash of each row's id and key) and, before
the commit, the in-memory index of this process. The index file is only a cache: it is written after a rebuild,
by ``save_router`` and on ``close``, and a crash anywhere leaves either the old file (its checksum no longer the
store's after a committed change, so it is rebuilt) or a file that matches. Another process's writes are seen
the same way: ``router()`` compares one meta value and rebuilds when it moved. A second meta value, ``version``
(``EditStore.version()``), counts every add and every rollback that changed a row, keyed or not, in the same
transaction; a long-lived reader (the server) compares it to know when to re-read the active edits.

The store's editor, its config and the router's metric (``Editor.metric``) are fixed by the first edit, in the
write transaction that inserts it (``add_edit``'s ``editor``, ``editor_config``, ``metric``; ``set_editor`` fixes
them without an edit; a store used without an editor may be given the metric when it is created). Every later
writer checks them inside its own insert transaction, so of two first writers with different specs (two
``lifelong edit apply`` started at once) one wins and the other gets a one-line error and writes nothing. Stores made before the metric was recorded (schema 1,
whose meta said ``ip`` whatever the editor) get it from their editor's name: ``l2`` for ``grace`` and ``ft-l``,
``ip`` for ``sola`` and any other name; the migration is written on open.

The store also records the identity of the base model (name and weight hash, see ``adapters/lm/model_loading.py``) and
refuses to be used with another model.

Damage and read-only media (schema 3). Opening runs ``PRAGMA quick_check`` (the structure of every page); every
row carries ``row_sha256`` (its fixed fields: all but the status, which must be one of its two values, and the
rollback time), checked whenever a row is read; the meta values are sealed by ``meta_sha256``, checked at open; a
router rebuild checks the active keys against ``keys_checksum``; the status queries scan the table (``NOT
INDEXED``) so a damaged index cannot hide a row. Whatever fails, and any SQLite or decoding error of a public
method, is one ``StoreError`` naming the database file. ``readonly=True`` opens with ``mode=ro`` (``immutable=1``
where the folder cannot be written, so SQLite cannot make its ``-shm`` file): reading works on a read-only file
system, every write is refused; a writable open there fails at once with the one-line "cannot be written" error.
Stores of schema 1 and 2 are upgraded by the first writable open (rows and meta sealed as they are); read-only,
they are read as they are. ``discard_if_empty`` removes a store that this open created if no edit got into it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sqlite3
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lifelong.editing.router import METRICS, ROUTER_META, ROUTER_PREFIX, Router
from lifelong.platform.atomic import atomic_write_with, file_sha256
from lifelong.platform.errors import UserError

DB_NAME = "edits.sqlite"
ADAPTER_DIR = "adapters"
LOCK_NAME = ".lock"
SCHEMA_VERSION = 3
MAX_ID = 2**63 - 1  # SQLite's largest integer
#: metric of stores made before the editor's metric was recorded (schema 1), by editor name; others: "ip"
LEGACY_METRICS = {"sola": "ip", "grace": "l2", "ft-l": "l2"}
_ZERO = "0" * 64

_SCHEMA = """
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
"""


class StoreError(UserError):
    """A store that cannot be used as asked (wrong model, unknown edit, corrupted file)."""


class CorruptEditError(StoreError):
    """An edit whose adapter file is missing or does not match its recorded SHA-256."""

    def __init__(self, edit_id: int, message: str) -> None:
        super().__init__(message)
        self.edit_id = edit_id


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


def _row_sha256(row: Sequence[Any]) -> str:
    """SHA-256 of the fixed fields of a row in ``EditStore._COLUMNS`` order: everything but ``status``,
    ``rolled_back_at`` (rollback changes them; ``status`` is checked against its two values) and the hash itself."""
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


def _mapped(method: Callable) -> Callable:
    """Turn an SQLite error inside a public store method into the one-line StoreError naming the database."""

    @functools.wraps(method)
    def wrapper(self: "EditStore", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged file can hold text that is not UTF-8
            raise self._error(exc) from None

    return wrapper


def _row_hash(edit_id: int, key: bytes) -> int:
    return int.from_bytes(hashlib.sha256(int(edit_id).to_bytes(8, "little") + key).digest(), "little")


class EditStore:
    """A directory of edits; see the module docstring. Use ``EditStore.open(path)`` or ``with EditStore(path)``."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model_identity: dict[str, str] | None = None,
        create: bool = True,
        metric: str | None = None,
        busy_timeout_s: float = 60.0,
        readonly: bool = False,
    ) -> None:
        """``metric``: the router metric of a new store used without an editor (``set_editor`` fixes the
        editor's); ignored for a store that already has one. ``readonly``: open an existing store for reading only
        (SQLite ``mode=ro``, or ``immutable=1`` where the folder cannot be written, e.g. a read-only file system):
        nothing is created, migrated or cleaned, and every write raises a StoreError."""
        self.path = Path(path)
        self.readonly = readonly
        self.created = False  # whether this open made the folder (``discard_if_empty``)
        self._legacy = False  # a store of schema 1 or 2 opened read-only: no row or meta checksums to check
        self._legacy_metric: str | None = None  # a schema-1 store opened read-only: its editor's metric
        self._conn = None  # type: ignore[assignment]
        if metric is not None and metric not in METRICS:
            raise StoreError(f"router metric {metric!r} is not allowed; allowed values: {', '.join(METRICS)}")
        db = self.path / DB_NAME
        if not self.path.exists():
            if not create or readonly:
                raise StoreError(f"edit store {self.path} does not exist")
        elif not self.path.is_dir():
            raise StoreError(f"edit store path {self.path} is not a directory")
        elif (not create or readonly) and not db.exists():
            raise StoreError(f"{self.path} is not an edit store (no {DB_NAME})")
        self._busy_timeout_s = busy_timeout_s
        try:
            if readonly:
                self._conn = self._connect_readonly(db)
                self._check_integrity(db)
                version = self._schema_version()
                if version < 3:  # read as it is (no checksums to check); a writer upgrades it
                    self._legacy = True
                    self._COLUMNS = self._COLUMNS.replace("row_sha256", "NULL AS row_sha256")
                    if version < 2:
                        raw = self._meta("editor")
                        self._legacy_metric = LEGACY_METRICS.get(json.loads(raw)["name"], "ip") if raw else None
            else:
                if not self.path.exists():
                    try:
                        self.path.mkdir(parents=True)
                        self.created = True
                    except FileExistsError:  # another process made it first
                        pass
                (self.path / ADAPTER_DIR).mkdir(exist_ok=True)
                self._conn = sqlite3.connect(db, timeout=busy_timeout_s, isolation_level=None,
                                             check_same_thread=False)
                self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                self._check_integrity(db)
                self._retry(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
                self._conn.execute("PRAGMA synchronous=FULL")
                self._create_or_upgrade(metric)
            self._verify_meta()
            if model_identity is not None:
                self.check_model(model_identity)
            if not readonly:
                self.reconcile()
        except BaseException as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]
            if isinstance(exc, (sqlite3.Error, UnicodeDecodeError)):  # damaged text is not UTF-8
                raise self._error(exc) from None
            if isinstance(exc, OSError):
                raise self._os_error(exc) from None
            raise
        self._metric_hint: str | None = None  # the editor's metric before set_editor records it (router(metric=))
        self._router = Router(self.metric)
        self._router_checksum: str | None = None  # the keys_checksum the in-memory router holds
        self._router_saved: str | None = None  # the checksum of the index file on disk, as far as we know

    def _connect_readonly(self, db: Path) -> sqlite3.Connection:
        """``mode=ro``; where SQLite cannot open that (a WAL database in a folder it cannot write its ``-shm``
        into, e.g. a read-only file system), ``immutable=1``: no writer can be at work on such a folder."""
        base = "file:" + urllib.parse.quote(str(db.resolve()))
        try:
            conn = sqlite3.connect(base + "?mode=ro", uri=True, timeout=self._busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            if os.access(self.path, os.W_OK):
                raise
        conn = sqlite3.connect(base + "?immutable=1", uri=True, isolation_level=None, check_same_thread=False)
        return conn

    def _check_integrity(self, db: Path) -> None:
        """``PRAGMA quick_check`` (every page's structure, not the values): a damaged file is refused at open."""
        rows = self._conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise StoreError(f"edit store database {db} is corrupted (SQLite quick_check: {rows[0][0]}); "
                             "restore it from a backup")

    def _schema_version(self) -> int:
        raw = self._meta("schema_version")
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            raise StoreError(f"edit store database {self.path / DB_NAME} is corrupted "
                             f"(schema_version {raw!r}); restore it from a backup") from None

    def _create_or_upgrade(self, metric: str | None) -> None:
        """Create the tables of a new store, or bring an older one up to ``SCHEMA_VERSION``, in one transaction."""
        with self._write_txn():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)
            if self._meta("meta_sha256") is not None:  # sealed (schema 3 on): check before anything is migrated
                self._verify_meta()
            version = self._schema_version()
            if version == 0:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("created_at", repr(time.time()))
                if metric is not None:
                    self._set_meta("metric", metric)
            if 0 < version < 2:  # schema 1: "metric" was always "ip"; take the editor's (module docstring)
                raw = self._meta("editor")
                name = json.loads(raw)["name"] if raw else None
                if name is not None:
                    self._set_meta("metric", LEGACY_METRICS.get(name, "ip"))
                else:
                    self._conn.execute("DELETE FROM meta WHERE key = 'metric'")
            if 0 < version < 3:  # schema 2: no row checksums; seal the rows and the fixed meta as they are now
                cols = {r[1] for r in self._conn.execute("PRAGMA table_info(edits)")}
                if "row_sha256" not in cols:
                    self._conn.execute("ALTER TABLE edits ADD COLUMN row_sha256 TEXT")
                for row in self._conn.execute(f"SELECT {self._COLUMNS} FROM edits").fetchall():
                    self._conn.execute("UPDATE edits SET row_sha256 = ? WHERE id = ?", (_row_sha256(row), row[0]))
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._seal_meta()
            if self._meta("keys_checksum") is None:
                self._set_meta("keys_checksum", self._compute_keys_checksum())

    # ------------------------------------------------------------------ opening and closing
    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> "EditStore":
        """Open (and by default create) the store at ``path``."""
        return cls(path, **kwargs)

    def close(self) -> None:
        """Close the database; the router's index file is written first if this process changed it."""
        if self._conn is not None:
            if (not self.readonly and self._router_checksum is not None
                    and self._router_checksum != self._router_saved):
                with contextlib.suppress(sqlite3.Error):
                    if self._router_checksum == self._meta("keys_checksum"):
                        self.save_router()
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "EditStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ sqlite helpers
    def _retry(self, fn: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _error(self, exc: sqlite3.Error | UnicodeDecodeError) -> StoreError:
        """The one-line StoreError for an SQLite error: a store that cannot be written, or a damaged file."""
        db = self.path / DB_NAME
        text = str(exc)
        if "readonly" in text or "read-only" in text or not os.access(self.path, os.W_OK) and not self.readonly:
            return StoreError(f"edit store {self.path} cannot be written ({text}); `lifelong edit list` and "
                              "`edit generate` still read it, `edit apply` and `edit rollback` need write access")
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return StoreError(f"edit store {db} is busy ({text}); another process holds it, try again")
        return StoreError(f"edit store database {db} is corrupted or unreadable ({text}); restore it from a backup")

    def _os_error(self, exc: OSError) -> StoreError:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(f"edit store {self.path} cannot be written ({exc.strerror}: {exc.filename}); "
                              "`lifelong edit list` and `edit generate` still read it, `edit apply` and "
                              "`edit rollback` need write access")
        return StoreError(f"edit store {self.path}: {exc.strerror or exc} ({exc.filename})")

    def _require_writable(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f"edit store {self.path} is open read-only; it cannot {what}")

    def _meta_seal(self) -> str:
        rows = self._conn.execute("SELECT key, value FROM meta WHERE key != 'meta_sha256' ORDER BY key").fetchall()
        # a damaged file may turn a text value into a number or a blob: sealed as such, it no longer matches
        rows = [[x if isinstance(x, str) else f"{type(x).__name__}:{x!r}" for x in row] for row in rows]
        return hashlib.sha256(json.dumps(rows).encode("utf-8", "surrogatepass")).hexdigest()

    def _seal_meta(self) -> None:
        """Inside a write transaction: record the SHA-256 of every other meta value (checked at open)."""
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('meta_sha256', ?)", (self._meta_seal(),))

    def _verify_meta(self) -> None:
        """Refuse a store whose meta values no longer match their seal (a damaged file: a changed byte in the
        editor's config or the model's identity must not go unnoticed)."""
        if not self._legacy and self._meta("meta_sha256") != self._meta_seal():
            raise StoreError(f"edit store database {self.path / DB_NAME} is corrupted (its meta data does not "
                             "match its checksum); restore it from a backup")

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[None]:
        self._retry(lambda: self._conn.execute("BEGIN IMMEDIATE"))
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Process-wide exclusive lock on ``.lock`` (released by the kernel if the process dies)."""
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        """Inside a write transaction: set one meta value and re-seal them all."""
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        self._seal_meta()

    def _bump_version(self) -> None:
        """Inside a write transaction: move the store's change counter (see ``version``)."""
        self._set_meta("version", str(int(self._meta("version") or 0) + 1))

    @_mapped
    def version(self) -> int:
        """The store's change counter: moves in the same transaction as every add and every rollback that changed
        a row, whoever the writer (this process or another). One indexed read, so a long-lived reader (the server,
        ``lifelong/serving/``) can compare it before each generation and reload only when it moved."""
        raw = self._meta("version") or "0"
        if not raw.isdigit():
            raise StoreError(f"edit store database {self.path / DB_NAME} is corrupted (version {raw!r})")
        return int(raw)

    @_mapped
    def meta(self) -> dict[str, str]:
        """All meta data of the store (schema version, metric, model identity, editor)."""
        return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    @property
    def metric(self) -> str:
        """The router metric: the recorded one (meta ``metric``); for a store that has none yet, the one asked for
        by ``router(metric=...)``, else ``ip``."""
        return self._legacy_metric or self._meta("metric") or self._metric_hint or "ip"

    # ------------------------------------------------------------------ model identity and editor
    @_mapped
    def set_model_name(self, name: str) -> None:
        """Record the model the store's edits are made for (the first session to open the store does this; a
        read-only store records nothing)."""
        if self.readonly:
            return
        with self._write_txn():
            if self._meta("model_name") is None:
                self._set_meta("model_name", name)

    @_mapped
    def record_calibration(self, record: dict[str, Any]) -> None:
        """Record how the store's routing threshold was chosen (``edit calibrate --store``): the threshold and what
        it was calibrated on, as meta ``calibration`` (JSON), so a report can refuse the edits it was chosen on."""
        self._require_writable("record a calibration")
        with self._write_txn():
            self._set_meta("calibration", json.dumps(record, sort_keys=True))

    @_mapped
    def calibration(self) -> dict[str, Any] | None:
        """The record ``record_calibration`` wrote, or None."""
        raw = self._meta("calibration")
        return json.loads(raw) if raw else None

    @_mapped
    def model_identity(self) -> dict[str, str] | None:
        raw = self._meta("model_identity")
        return json.loads(raw) if raw else None

    @_mapped
    def check_model(self, identity: dict[str, str]) -> None:
        """Record the base model's identity on first use (not on a read-only store); refuse a different model
        afterwards."""
        if self.readonly:
            stored = self._meta("model_identity")
            if stored is None:
                return
        else:
            with self._write_txn():
                stored = self._meta("model_identity")
                if stored is None:
                    self._set_meta("model_identity", json.dumps(identity, sort_keys=True))
                    return
        have = json.loads(stored)
        if have.get("weights_sha256") != identity.get("weights_sha256"):
            raise StoreError(
                f"edit store {self.path} was made for model {have.get('name')!r} "
                f"(weights sha256 {str(have.get('weights_sha256'))[:12]}…), not for {identity.get('name')!r} "
                f"(weights sha256 {str(identity.get('weights_sha256'))[:12]}…); use the model it was made for"
            )

    @_mapped
    def editor_spec(self) -> tuple[str, dict[str, Any]] | None:
        """The ``(editor name, config)`` the store's edits were made with, or None for a new store."""
        raw = self._meta("editor")
        if raw is None:
            return None
        d = json.loads(raw)
        return d["name"], d.get("config", {})

    @_mapped
    def set_editor(self, name: str, config: dict[str, Any], metric: str | None = None) -> None:
        """Fix the editor of the store (first apply) and its router ``metric``; a different editor later is refused.

        The metric may change only while no edit has a key (then the router is rebuilt with it)."""
        if metric is not None and metric not in METRICS:
            raise StoreError(f"router metric {metric!r} is not allowed; allowed values: {', '.join(METRICS)}")
        if self.readonly:
            self._check_editor_name(name)
            return
        with self._write_txn():
            claimed = self._claim_editor(name, None, metric)
        if claimed:
            self._follow_metric()
        else:
            self._check_editor_name(name)

    @_mapped
    def check_editor(self, name: str, config: dict[str, Any] | None = None, metric: str | None = None) -> None:
        """Raise the clear StoreError if the store's editor, config or metric is not ``name``/``config``/``metric``
        (a read, no write: ``add_edit`` repeats the check inside its write transaction, which is what counts)."""
        self._conn.execute("BEGIN")  # one read snapshot (WAL)
        try:
            self._editor_conflict(name, config, metric)
        finally:
            self._conn.execute("COMMIT")

    def _check_editor_name(self, name: str) -> None:
        raw = self._meta("editor")
        have = json.loads(raw) if raw else None
        if have is not None and have["name"] != name:
            raise StoreError(
                f"edit store {self.path} holds {have['name']!r} edits; it cannot take {name!r} edits "
                f"(use --editor {have['name']} or a new store)"
            )

    @staticmethod
    def _config_diff(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
        """The keys both configs set to different values (a key only one side has is its default: not a clash,
        so a store made before a config field existed stays usable)."""
        return sorted(k for k in set(have) & set(want) if have[k] != want[k])

    def _editor_conflict(self, name: str, config: dict[str, Any] | None, metric: str | None) -> None:
        """Raise if the recorded editor spec (or metric) differs from the one asked for; inside a transaction."""
        raw = self._meta("editor")
        if raw is None:
            keyed = self._conn.execute("SELECT COUNT(*) FROM edits WHERE key IS NOT NULL").fetchone()[0]
            have_metric = self._meta("metric")
            if metric is not None and keyed and have_metric is not None and have_metric != metric:
                raise StoreError(f"edit store {self.path} routes its keys by {have_metric!r}; "
                                 f"a {name!r} editor routes by {metric!r} (use a new store)")
            return
        have = json.loads(raw)
        have_cfg = have.get("config", {}) or {}
        diff = self._config_diff(have_cfg, config) if config is not None else []
        if have["name"] != name or diff:
            n = int(self._conn.execute("SELECT COUNT(*) FROM edits").fetchone()[0])
            shown = {k: have_cfg[k] for k in diff} if have["name"] == name else have_cfg
            asked = {k: config[k] for k in diff} if have["name"] == name and config is not None else (config or {})
            raise StoreError(
                f"edit store {self.path} holds {n} {have['name']!r} edits with config "
                f"{json.dumps(shown, sort_keys=True)}; it cannot take {name!r} edits with config "
                f"{json.dumps(asked, sort_keys=True)}; use a new store"
            )
        have_metric = self._meta("metric")
        if metric is not None and have_metric is not None and have_metric != metric:
            raise StoreError(f"edit store {self.path} routes its keys by {have_metric!r}; "
                             f"a {name!r} editor routes by {metric!r}; use a new store")

    def _claim_editor(self, name: str, config: dict[str, Any] | None, metric: str | None) -> bool:
        """Inside a write transaction: record ``name``/``config`` (and ``metric``) if the store has no editor yet
        (returns True), else check them against the recorded ones (``_editor_conflict``; returns False).

        ``set_editor`` checks the name only (its callers pass a partial config); ``add_edit`` passes the config."""
        if self._meta("editor") is not None:
            if config is not None:
                self._editor_conflict(name, config, metric)
            return False
        self._editor_conflict(name, None, metric)  # keyed edits without an editor: the metric may not change
        self._set_meta("editor", json.dumps({"name": name, "config": config or {}}, sort_keys=True))
        if metric is not None and self._meta("metric") != metric:
            self._set_meta("metric", metric)
        return True

    def _follow_metric(self) -> None:
        """After a commit that may have fixed the metric: make the in-memory router use it (in place: editors hold
        this object)."""
        if self._router.metric != self.metric:
            self._router.build([], np.zeros((0, 1), np.float32))
            self._router.metric = self.metric
            self._router_checksum = None

    # ------------------------------------------------------------------ reading rows
    def _row_to_record(self, row: sqlite3.Row | tuple) -> EditRecord:
        """A row as an EditRecord, after checking its checksum (a damaged row is refused, never used)."""
        (id_, uid, prompt, target, extra, editor, econf, layer, key, key_dim, afile, asha, status, cat, rat,
         row_sha) = row
        if status not in ("active", "rolled_back") or row_sha is not None and row_sha != _row_sha256(row):
            raise StoreError(f"edit store database {self.path / DB_NAME} is corrupted (the row of edit {id_} does "
                             "not match its checksum); restore it from a backup")
        vec = np.frombuffer(key, dtype=np.float32).copy() if key is not None else None
        return EditRecord(
            id=int(id_), uid=uid, prompt=prompt, target=target, status=status, editor=editor, layer=layer,
            editor_config=json.loads(econf), extra=json.loads(extra), key=vec, adapter_file=afile,
            adapter_sha256=asha, created_at=float(cat), rolled_back_at=rat,
        )

    _COLUMNS = (
        "id, uid, prompt, target, extra, editor, editor_config, layer, key, key_dim, adapter_file, "
        "adapter_sha256, status, created_at, rolled_back_at, row_sha256"
    )

    @_mapped
    def all_edits(self) -> list[EditRecord]:
        """Every edit ever applied, in order, rolled back or not."""
        rows = self._conn.execute(f"SELECT {self._COLUMNS} FROM edits ORDER BY id").fetchall()
        return [self._row_to_record(r) for r in rows]

    @_mapped
    def active_edits(self) -> list[EditRecord]:
        """The edits currently in force, in the order they were applied."""
        rows = self._conn.execute(
            f"SELECT {self._COLUMNS} FROM edits NOT INDEXED WHERE status = 'active' ORDER BY id"
        ).fetchall()
        return [self._row_to_record(r) for r in rows]

    @_mapped
    def get(self, edit_id: int) -> EditRecord:
        if not 1 <= int(edit_id) <= MAX_ID:
            raise StoreError(f"no edit with id {edit_id} in store {self.path}")
        row = self._conn.execute(f"SELECT {self._COLUMNS} FROM edits WHERE id = ?", (int(edit_id),)).fetchone()
        if row is None:
            raise StoreError(f"no edit with id {edit_id} in store {self.path}")
        return self._row_to_record(row)

    @_mapped
    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM edits NOT INDEXED WHERE status = 'active'").fetchone()[0])

    # ------------------------------------------------------------------ adapters
    def load_tensors(self, record: EditRecord) -> dict[str, Any]:
        """The edit's tensors, after checking the file against its recorded SHA-256."""
        from safetensors.torch import load_file

        if not record.adapter_file:
            return {}
        path = self.path / ADAPTER_DIR / record.adapter_file
        if not path.is_file():
            raise CorruptEditError(record.id, f"edit {record.id}: adapter file {path} is missing")
        sha = file_sha256(path)
        if sha != record.adapter_sha256:
            raise CorruptEditError(
                record.id,
                f"edit {record.id}: adapter file {path} is corrupted (sha256 {sha[:12]}…, "
                f"recorded {str(record.adapter_sha256)[:12]}…); roll it back or re-apply it",
            )
        try:
            return load_file(str(path))
        except Exception as exc:  # a file with the right hash that safetensors refuses: report, do not crash
            raise CorruptEditError(record.id, f"edit {record.id}: cannot read {path}: {exc}") from exc

    @_mapped
    def verify(self) -> list[tuple[int, str]]:
        """``(id, problem)`` for every active edit whose adapter file is missing or corrupted."""
        bad = []
        for rec in self.active_edits():
            try:
                if rec.adapter_file:
                    path = self.path / ADAPTER_DIR / rec.adapter_file
                    if not path.is_file():
                        raise CorruptEditError(rec.id, f"edit {rec.id}: adapter file {path} is missing")
                    if file_sha256(path) != rec.adapter_sha256:
                        raise CorruptEditError(rec.id, f"edit {rec.id}: adapter file {path} is corrupted")
            except CorruptEditError as exc:
                bad.append((rec.id, str(exc)))
        return bad

    # ------------------------------------------------------------------ writing
    @_mapped
    def add_edit(
        self,
        prompt: str,
        target: str,
        *,
        editor: str,
        tensors: dict[str, Any] | None = None,
        key: np.ndarray | None = None,
        layer: str = "",
        editor_config: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        metric: str | None = None,
        _crash_hook: Callable[[str], None] | None = None,
    ) -> EditRecord:
        """Write one edit atomically: tensors to a temp file, fsync, rename, then commit the row.

        The store's editor is fixed by its first edit, in the transaction that inserts it: ``editor``,
        ``editor_config`` (``{}`` when None) and ``metric`` (the router's, when given) are recorded if the store has
        no editor yet, else checked against the recorded ones in the same transaction, so of two first writers
        with different specs exactly one wins; the other gets the one-line StoreError ("store holds N X edits with
        config ...; use a new store") and writes nothing (no row, no adapter file). ``editor_config`` None checks
        the name only.

        ``_crash_hook`` is called with a stage name between the steps; the crash tests use it to die there.
        """
        from safetensors.torch import save_file

        self._require_writable("take an edit")
        uid = uuid.uuid4().hex
        hook = _crash_hook or (lambda stage: None)
        key_blob = None
        key_dim = 0
        if key is not None:
            k = np.asarray(key, dtype=np.float32).reshape(-1)
            key_blob, key_dim = k.tobytes(), int(k.size)
        if metric is not None and metric not in METRICS:
            raise StoreError(f"router metric {metric!r} is not allowed; allowed values: {', '.join(METRICS)}")
        cfg = dict(editor_config) if editor_config is not None else None
        adir = self.path / ADAPTER_DIR
        claimed = False
        self.check_editor(editor, cfg, metric)  # early, before any file is written; the insert's txn decides
        with self._file_lock():
            afile = asha = None
            if tensors:
                afile = f"{uid}.safetensors"
                state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
                atomic_write_with(adir / afile, lambda tmp: save_file(
                    state, str(tmp), metadata={"edit_uid": uid, "editor": editor, "layer": layer}), hook=hook)
                asha = file_sha256(adir / afile)
            try:
                with self._write_txn():
                    # the editor spec is fixed (first writer) or checked (every later one) in the insert's
                    # transaction
                    claimed = self._claim_editor(editor, cfg, metric)
                    cur = self._conn.execute(
                        "INSERT INTO edits(uid, prompt, target, extra, editor, editor_config, layer, key, key_dim, "
                        "adapter_file, adapter_sha256, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?, 'active', ?)",
                        (uid, prompt, target, json.dumps(extra or {}, sort_keys=True), editor,
                         json.dumps(cfg or {}, sort_keys=True), layer, key_blob, key_dim, afile, asha,
                         time.time()),
                    )
                    new_id = int(cur.lastrowid)
                    self._seal_rows(new_id)
                    self._bump_version()
                    hook("inserted")
                    if claimed:
                        self._follow_metric()
                    if key_blob is not None:
                        self._router_update(added=[(new_id, key_blob)])
                        hook("routed")
            except BaseException:
                self._unlink_adapter(afile)  # we hold the lock: the file is ours, and no row names it
                raise
            hook("committed")
        return self.get(new_id)

    def _seal_rows(self, first_id: int) -> None:
        """Inside the insert's transaction: record the checksum of every new row from ``first_id`` on."""
        rows = self._conn.execute(
            f"SELECT {self._COLUMNS} FROM edits WHERE id >= ? AND row_sha256 IS NULL", (first_id,)).fetchall()
        self._conn.executemany("UPDATE edits SET row_sha256 = ? WHERE id = ?", ((_row_sha256(r), r[0]) for r in rows))

    def discard_if_empty(self) -> bool:
        """Close the store and remove its folder if this open created it and no edit was ever stored in it (a
        refused first ``edit apply`` leaves nothing behind); under the store's lock, so a writer that got in
        first keeps its edit. Returns whether the folder was removed."""
        if not self.created or self._conn is None:
            return False
        with self._file_lock():
            if self._conn.execute("SELECT COUNT(*) FROM edits").fetchone()[0]:
                return False
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
            shutil.rmtree(self.path, ignore_errors=True)
        return True

    def _unlink_adapter(self, afile: str | None) -> None:
        if afile:
            with contextlib.suppress(OSError):
                (self.path / ADAPTER_DIR / afile).unlink()

    @_mapped
    def add_keys(self, keys: np.ndarray, *, editor: str, prompts: Sequence[str] | None = None,
                 layer: str = "") -> list[int]:
        """Bulk-insert key-only edits (no tensors) in one transaction; returns their ids.

        For benchmarks and imports that need many keys in the router (``bench/edit_router.py``); an editor has no
        weights for such edits, so a query routed to one gets the base model's output."""
        self._require_writable("take edits")
        keys = np.ascontiguousarray(np.asarray(keys, dtype=np.float32).reshape(len(keys), -1))
        now = time.time()
        with self._file_lock(), self._write_txn():
            first = int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM edits").fetchone()[0]) + 1
            ids = list(range(first, first + len(keys)))
            blobs = [k.tobytes() for k in keys]
            dim = int(keys.shape[1]) if len(keys) else 0
            self._conn.executemany(
                "INSERT INTO edits(id, uid, prompt, target, editor, layer, key, key_dim, status, created_at) "
                "VALUES (?,?,?,?,?,?,?,?, 'active', ?)",
                ((i, uuid.uuid4().hex, prompts[j] if prompts is not None else f"key {i}", "", editor, layer,
                  blobs[j], dim, now) for j, i in enumerate(ids)),
            )
            self._seal_rows(first)
            self._router_update(added=list(zip(ids, blobs)))
            self._bump_version()
        return ids

    @_mapped
    def rollback(self, ids: Sequence[int], *, _crash_hook: Callable[[str], None] | None = None
                 ) -> list[tuple[int, bool]]:
        """Mark edits rolled back and drop their keys from the router, in one transaction; ``(id, changed)`` per id
        (False: was already rolled back). Unknown ids are refused before anything changes.

        ``_crash_hook`` is called with ``routed`` (keys dropped, not committed) and ``committed``.
        """
        self._require_writable("roll edits back")
        ids = [int(i) for i in ids]
        out_of_range = [i for i in ids if not 1 <= i <= MAX_ID]
        if out_of_range:  # SQLite ids are positive 64-bit integers: no such edit can exist
            raise StoreError(f"no edit with id {', '.join(map(str, out_of_range))} in store {self.path} "
                             f"(edit ids are whole numbers from 1 to {MAX_ID})")
        hook = _crash_hook or (lambda stage: None)
        with self._write_txn():
            known = {  # each row through its checksum: a damaged row is refused, not half rolled back
                rec.id: (rec.status, None if rec.key is None else rec.key.tobytes())
                for rec in map(self._row_to_record, self._conn.execute(
                    f"SELECT {self._COLUMNS} FROM edits WHERE id IN ({','.join('?' * len(ids))})", ids
                ).fetchall())
            } if ids else {}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise StoreError(f"no edit with id {', '.join(map(str, unknown))} in store {self.path}")
            out = []
            removed: list[tuple[int, bytes]] = []
            now = time.time()
            for i in ids:
                status, key = known[i]
                changed = status == "active"
                if changed:
                    self._conn.execute(
                        "UPDATE edits SET status = 'rolled_back', rolled_back_at = ? WHERE id = ?", (now, i)
                    )
                    known[i] = ("rolled_back", key)
                    if key is not None:
                        removed.append((i, key))
                out.append((i, changed))
            if any(c for _, c in out):
                self._bump_version()
            if removed:
                self._router_update(removed=removed)
                hook("routed")
        hook("committed")
        return out

    @_mapped
    def reconcile(self) -> list[str]:
        """Remove every file in the adapter folder that no row names (left by a crash); returns what was removed.

        Anything else there is a leftover: our own temporary files (``*.tmp``), the one safetensors itself writes
        before its rename (``.tmpXXXXXX``, no suffix), and adapter files whose row was never committed. Writers
        hold the same file lock while they write, so nothing in progress is removed."""
        removed: list[str] = []
        if self.readonly:
            return removed
        adir = self.path / ADAPTER_DIR
        with self._file_lock():
            named = {r[0] for r in self._conn.execute("SELECT adapter_file FROM edits WHERE adapter_file IS NOT NULL")}
            for p in adir.iterdir():
                if p.name not in named:
                    with contextlib.suppress(OSError):
                        p.unlink()
                        removed.append(p.name)
            for p in self.path.glob(f".{ROUTER_PREFIX}*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
            for p in self.path.glob(f".{ROUTER_META}.*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
        return removed

    # ------------------------------------------------------------------ router
    def _compute_keys_checksum(self) -> str:
        """The keys checksum from the rows themselves (a full scan; used once per store, for old stores)."""
        acc = 0
        for id_, key in self._conn.execute(
                "SELECT id, key FROM edits NOT INDEXED WHERE status = 'active' AND key IS NOT NULL"):
            acc ^= _row_hash(id_, key)
        return f"{acc:064x}"

    @_mapped
    def keys_checksum(self) -> str:
        """Checksum of the active edits' ids and keys (one meta value; moves with every add and rollback)."""
        return self._meta("keys_checksum") or _ZERO

    def _router_update(self, added: Sequence[tuple[int, bytes]] = (), removed: Sequence[tuple[int, bytes]] = ()
                       ) -> None:
        """Inside the write transaction: move the keys checksum and, if it was in step, the in-memory router."""
        before = self.keys_checksum()
        acc = int(before, 16)
        for id_, key in (*added, *removed):
            acc ^= _row_hash(id_, key)
        after = f"{acc:064x}"
        self._set_meta("keys_checksum", after)
        if self._router_checksum != before:
            self._router_checksum = None  # out of step already (another writer): rebuilt on the next router()
            return
        try:
            if removed:
                self._router.remove(i for i, _ in removed)
            if added:
                keys = np.stack([np.frombuffer(k, dtype=np.float32) for _, k in added])
                self._router.add([i for i, _ in added], keys)
        except (ValueError, RuntimeError):
            self._router_checksum = None  # e.g. a key of another size: the rebuild reports it
            return
        self._router_checksum = after

    @_mapped
    def router(self, metric: str | None = None) -> Router:
        """The router of record (always the same object for this store; editors hold it), in step with the rows.

        Loaded from the index file when its checksum is the store's, else rebuilt from the active rows (and saved).
        ``metric``: the editor's, used while the store has not recorded one (a new store before ``set_editor``).
        """
        if metric is not None:
            if metric not in METRICS:
                raise StoreError(f"router metric {metric!r} is not allowed; allowed values: {', '.join(METRICS)}")
            self._metric_hint = metric
        checksum = self.keys_checksum()
        if self._router.metric != self.metric:
            self._router.build([], np.zeros((0, 1), np.float32))
            self._router.metric = self.metric
            self._router_checksum = None
        if self._router_checksum == checksum and not self._router.needs_rebuild():
            return self._router
        if self._router_checksum != checksum and self._router.read(self.path, checksum):
            self._router_checksum = self._router_saved = checksum
            if not self._router.needs_rebuild():
                return self._router
        self._rebuild_router()
        return self._router

    def _rebuild_router(self) -> None:
        self._conn.execute("BEGIN")  # one read snapshot of the rows and of their checksum (WAL)
        try:
            checksum = self.keys_checksum()
            rows = self._conn.execute(
                "SELECT id, key, key_dim FROM edits NOT INDEXED WHERE status = 'active' AND key IS NOT NULL "
                "ORDER BY id"
            ).fetchall()
        finally:
            self._conn.execute("COMMIT")
        acc = 0
        for id_, key, _ in rows:
            acc ^= _row_hash(id_, key)
        if f"{acc:064x}" != checksum:
            raise StoreError(f"edit store database {self.path / DB_NAME} is corrupted (the active keys do not match "
                             "their checksum); restore it from a backup")
        dims = {int(d) for _, _, d in rows}
        if len(dims) > 1:
            raise StoreError(f"edit store {self.path} holds keys of sizes {sorted(dims)}; the router needs one size")
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        keys = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                if rows else np.zeros((0, 1), np.float32))
        del rows
        self._router.build(ids, keys)
        self._router_checksum = checksum
        self.save_router()

    def save_router(self) -> None:
        """Write the in-memory router beside the store, under the store's lock (a no-op on a read-only store: the
        index is rebuilt next time)."""
        if self._router_checksum is None or self.readonly:
            return
        try:
            with self._file_lock():
                self._router.write(self.path, self._router_checksum)
            self._router_saved = self._router_checksum
        except OSError:
            pass

    @_mapped
    def search(self, keys: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest active edits to ``keys`` (n, d): ``(scores, ids)``; ids are -1 where there is none.

        Scores are cosine similarities for the ``ip`` metric and squared L2 distances for ``l2``.
        """
        return self.router().search(np.asarray(keys, dtype=np.float32).reshape(len(keys), -1), k)
