"""The EditStore: a durable, revocable registry of model edits in one directory (user guide: ``docs/editing.md``).

Layout of a store directory::

    edits.sqlite          the single source of truth: one row per edit, the store's meta data (WAL mode)
    adapters/<uid>.safetensors   one file per edit (its LoRA / codebook value / weight delta)
    router.json, router-<checksum>.faiss
                                 the router of record (``editing/router.py``): a faiss index over the active edits'
                                 keys with the editor's metric, the checksum of the rows it was built from and its
                                 own size and SHA-256; used when all match, else rebuilt from the rows
    .lock                        advisory lock that serialises the "write file, commit row" step

This module holds what the rows mean: adding and rolling back edits, their adapter files, the clean-up of
leftovers. Beside it, each changed for its own reason: ``editing/store_schema.py`` (tables, upgrades, row and meta
checksums), ``editing/store_db.py`` (the SQLite connection, transactions, file lock, one-line errors),
``editing/store_spec.py`` (the model identity and editor spec a store is fixed to) and ``editing/store_router.py``
(the router kept in step with the rows, inside the same transactions).

Applying an edit is atomic: its file is named in the ``pending`` manifest (committed), its tensors are written to a
temporary file, fsynced and renamed, and only then is the row committed (which drops the manifest entry). A crash
before the commit leaves at most a file that the manifest names and no row does; opening the store removes those
(under the lock, so a writer's file in flight is never taken) and nothing else: a store deletes only files it
wrote, and is never made in a non-empty folder that is not a store. Rollback marks the row ``rolled_back`` and
drops its key from the router; rolling back twice is a no-op. Concurrent writers are serialised by SQLite's busy
timeout and the lock; no edit is lost. ``version`` counts every add and every rollback that changed a row, in the
same transaction; a long-lived reader (the server) compares it to know when to re-read the active edits.

The store's editor, its config and the router's metric (``Editor.metric``) are fixed by the first edit, in the
write transaction that inserts it, and checked by every later writer in its own (``editing/store_spec.py``); the
base model's identity is recorded at the first open and checked at every later one. Whatever check fails, and
any SQLite or decoding error of a public method, is one ``StoreError`` naming the database file; the status
queries scan the table (``NOT INDEXED``) so a damaged index cannot hide a row. ``readonly=True`` reads a store on
a read-only file system and refuses every write. ``discard_if_empty`` removes a store that this open created if
no edit got into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from lifelong.editing import store_db
from lifelong.editing.store_db import mapped
from lifelong.editing import store_schema as schema
from lifelong.editing import store_spec as spec
from lifelong.editing.router import ROUTER_META, ROUTER_PREFIX, Router
from lifelong.editing.store_router import StoreRouter, check_metric
from lifelong.editing.store_schema import (  # noqa: F401 (re-exported)
    SCHEMA_VERSION, EditRecord, StoreError, StoreFullError, UnknownEditError)
from lifelong.platform.atomic import atomic_write_with, file_sha256

DB_NAME = "edits.sqlite"
ADAPTER_DIR = "adapters"
MAX_ID = 2**63 - 1  # SQLite's largest integer
_ADAPTER_NAME = re.compile(r"[0-9a-f]{32}\.safetensors")  # the only adapter file names a store writes


class CorruptEditError(StoreError):
    """An edit whose adapter file is missing or does not match its recorded SHA-256."""

    def __init__(self, edit_id: int, message: str) -> None:
        super().__init__(message)
        self.edit_id = edit_id


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
        self._legacy_metric: str | None = None  # a schema-1 store opened read-only: its editor's metric
        self._columns = schema.COLUMNS  # LEGACY_COLUMNS: a store of schema 1 or 2 read as it is (no checksums)
        self._conn = None  # type: ignore[assignment]
        check_metric(metric)
        store_db.check_store_path(self.path, self._db, create=create, readonly=readonly)
        self._busy_timeout_s = busy_timeout_s
        try:
            if readonly:
                self._open_readonly()
            else:
                self._open_writable(metric)
            if self._columns == schema.COLUMNS:
                schema.verify_meta(self._conn, self._db)
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
                raise store_db.os_error(self.path, exc) from None
            raise
        self._metric_hint: str | None = None  # the editor's metric before set_editor records it (router(metric=))
        self._routes = StoreRouter(self.path, self._db, self.metric, conn=lambda: self._conn, lock=self._file_lock,
                                   readonly=readonly)

    @property
    def _db(self) -> Path:
        return self.path / DB_NAME

    def _open_readonly(self) -> None:
        """Open for reading; a store of schema 1 or 2 is read as it is (no checksums to check; a writer upgrades
        it)."""
        self._conn = store_db.connect_readonly(self.path, self._db, self._busy_timeout_s)
        schema.quick_check(self._conn, self._db)
        version = schema.schema_version(self._conn, self._db)
        if version < 3:
            self._columns = schema.LEGACY_COLUMNS
            if version < 2:
                self._legacy_metric = schema.legacy_metric(self._conn)

    def _open_writable(self, metric: str | None) -> None:
        """Open (making the folder if needed), check the pages, and create or upgrade the tables."""
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
                self.created = True
            except FileExistsError:  # another process made it first
                pass
        # the database first: a racing opener of a new store sees an empty folder or one with the database
        self._conn = store_db.connect_writable(self._db, self._busy_timeout_s)
        (self.path / ADAPTER_DIR).mkdir(exist_ok=True)
        schema.quick_check(self._conn, self._db)
        store_db.use_wal(self._conn, self._busy_timeout_s)
        with self._write_txn():
            schema.create_or_upgrade(self._conn, self._db, metric)
            StoreRouter.ensure_checksum(self._conn)

    # ------------------------------------------------------------------ opening and closing
    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> "EditStore":
        """Open (and by default create) the store at ``path``."""
        return cls(path, **kwargs)

    def close(self) -> None:
        """Close the database; the router's index file is written first if this process changed it."""
        if self._conn is not None:
            self._routes.save_if_changed()
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "EditStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ sqlite helpers (editing/store_db.py)
    def _error(self, exc: sqlite3.Error | UnicodeDecodeError) -> StoreError:
        return store_db.sqlite_error(self.path, self._db, exc, self.readonly)

    def _require_writable(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f"edit store {self.path} is open read-only; it cannot {what}")

    def _write_txn(self) -> ContextManager[None]:
        return store_db.write_txn(self._conn, self._busy_timeout_s)

    def _file_lock(self) -> ContextManager[None]:
        """Process-wide exclusive lock on ``.lock`` (released by the kernel if the process dies)."""
        return store_db.file_lock(self.path)

    def _meta(self, key: str) -> str | None:
        return schema.get_meta(self._conn, key)

    def _set_meta(self, key: str, value: str) -> None:
        """Inside a write transaction: set one meta value and re-seal them all."""
        schema.set_meta(self._conn, key, value)

    def _bump_version(self) -> None:
        """Inside a write transaction: move the store's change counter (see ``version``)."""
        self._set_meta("version", str(int(self._meta("version") or 0) + 1))

    @mapped
    def version(self) -> int:
        """The store's change counter, moved in the transaction of every add and every rollback that changed a row,
        whoever the writer: one indexed read, so a long-lived reader (the server) reloads only when it moved."""
        raw = self._meta("version") or "0"
        if not raw.isdigit():
            raise StoreError(f"edit store database {self.path / DB_NAME} is corrupted (version {raw!r})")
        return int(raw)

    @mapped
    def meta(self) -> dict[str, str]:
        """All meta data of the store (schema version, metric, model identity, editor)."""
        return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    @property
    def metric(self) -> str:
        """The router metric: the recorded one, else the one asked for by ``refresh_router(metric=...)``, else ip."""
        return self._legacy_metric or self._meta("metric") or self._metric_hint or "ip"

    # ------------------------------------------------------------------ model identity and editor
    @mapped
    def set_model_name(self, name: str) -> None:
        """Record the model the store's edits are made for (the first session to open the store does this; a
        read-only store records nothing)."""
        if self.readonly:
            return
        with self._write_txn():
            if self._meta("model_name") is None:
                self._set_meta("model_name", name)

    @mapped
    def model_identity(self) -> dict[str, str] | None:
        raw = self._meta("model_identity")
        return json.loads(raw) if raw else None

    @mapped
    def record_calibration(self, record: dict[str, Any]) -> None:
        """How the routing threshold was chosen (``edit calibrate --store``: the threshold, the file's SHA-256 and
        the ids calibrated on), kept as meta ``calibration`` so a report can refuse those edits."""
        self._require_writable("record a calibration")
        with self._write_txn():
            self._set_meta("calibration", json.dumps(record, sort_keys=True))

    @mapped
    def calibration(self) -> dict[str, Any] | None:
        """The record ``record_calibration`` wrote, or None."""
        raw = self._meta("calibration")
        return json.loads(raw) if raw else None

    @mapped
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
        spec.check_model(self.path, stored, identity)

    @mapped
    def editor_spec(self) -> tuple[str, dict[str, Any]] | None:
        """The ``(editor name, config)`` the store's edits were made with, or None for a new store."""
        return spec.editor_spec(self._conn)

    @mapped
    def set_editor(self, name: str, config: dict[str, Any], metric: str | None = None) -> None:
        """Fix the editor of the store and its router ``metric``; a different editor later is refused. A non-empty
        ``config`` is fixed (or checked) too: a server claims a new store at start, so a racing ``edit apply`` with
        another editor is refused instead of fixing the store under it. The metric may change only while no edit
        has a key (then the router is rebuilt with it)."""
        check_metric(metric)
        if self.readonly:
            spec.check_editor_name(self._conn, self.path, name)
            return
        with self._write_txn():
            claimed = spec.claim_editor(self._conn, self.path, name, config or None, metric)
        if claimed:
            self._routes.follow_metric(self.metric)
        else:
            spec.check_editor_name(self._conn, self.path, name)

    @mapped
    def check_editor(self, name: str, config: dict[str, Any] | None = None, metric: str | None = None) -> None:
        """Raise the clear StoreError if the store's editor, config or metric is not ``name``/``config``/``metric``
        (a read, no write: ``add_edit`` repeats the check inside its write transaction, which is what counts)."""
        with store_db.read_snapshot(self._conn):
            spec.editor_conflict(self._conn, self.path, name, config, metric)

    # ------------------------------------------------------------------ reading rows
    def _row_to_record(self, row: Sequence[Any]) -> EditRecord:
        return schema.row_to_record(row, self._db)

    @mapped
    def all_edits(self) -> list[EditRecord]:
        """Every edit ever applied, in order, rolled back or not."""
        rows = self._conn.execute(f"SELECT {self._columns} FROM edits ORDER BY id").fetchall()
        return [self._row_to_record(r) for r in rows]

    @mapped
    def active_edits(self) -> list[EditRecord]:
        """The edits currently in force, in the order they were applied."""
        rows = self._conn.execute(
            f"SELECT {self._columns} FROM edits NOT INDEXED WHERE status = 'active' ORDER BY id"
        ).fetchall()
        return [self._row_to_record(r) for r in rows]

    @mapped
    def get(self, edit_id: int) -> EditRecord:
        if not 1 <= int(edit_id) <= MAX_ID:
            raise UnknownEditError(f"no edit with id {edit_id} in store {self.path}")
        row = self._conn.execute(f"SELECT {self._columns} FROM edits WHERE id = ?", (int(edit_id),)).fetchone()
        if row is None:
            raise UnknownEditError(f"no edit with id {edit_id} in store {self.path}")
        return self._row_to_record(row)

    @mapped
    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM edits NOT INDEXED WHERE status = 'active'").fetchone()[0])

    # ------------------------------------------------------------------ adapters
    def _checked_file(self, rec: EditRecord) -> Path:
        """The edit's adapter file, after checking it exists and matches its recorded SHA-256."""
        path = self.path / ADAPTER_DIR / str(rec.adapter_file)
        if not path.is_file():
            raise CorruptEditError(rec.id, f"edit {rec.id}: adapter file {path} is missing")
        sha = file_sha256(path)
        if sha != rec.adapter_sha256:
            raise CorruptEditError(rec.id, f"edit {rec.id}: adapter file {path} is corrupted (sha256 {sha[:12]}…, "
                                           f"recorded {str(rec.adapter_sha256)[:12]}…); roll it back or re-apply it")
        return path

    def load_tensors(self, record: EditRecord) -> dict[str, Any]:
        """The edit's tensors, after checking the file against its recorded SHA-256."""
        from safetensors.torch import load_file

        if not record.adapter_file:
            return {}
        path = self._checked_file(record)
        try:
            return load_file(str(path))
        except Exception as exc:  # a file with the right hash that safetensors refuses: report, do not crash
            raise CorruptEditError(record.id, f"edit {record.id}: cannot read {path}: {exc}") from exc

    @mapped
    def verify(self) -> list[tuple[int, str]]:
        """``(id, problem)`` for every active edit whose adapter file is missing or corrupted."""
        bad = []
        for rec in self.active_edits():
            try:
                if rec.adapter_file:
                    self._checked_file(rec)
            except CorruptEditError as exc:
                bad.append((rec.id, str(exc)))
        return bad

    # ------------------------------------------------------------------ writing
    @mapped
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

        ``editor``, ``editor_config`` (``{}`` when None; None checks the name only) and ``metric`` are recorded if the
        store has no editor yet, else checked, in the insert's transaction: of two first writers with different
        specs exactly one wins; the other gets the one-line StoreError and writes nothing (no row, no adapter file).
        ``_crash_hook`` is called with a stage name between the steps; the crash tests use it to die there."""
        self._require_writable("take an edit")
        uid = uuid.uuid4().hex
        hook = _crash_hook or (lambda stage: None)
        key_blob = None
        key_dim = 0
        if key is not None:
            k = np.asarray(key, dtype=np.float32).reshape(-1)
            key_blob, key_dim = k.tobytes(), int(k.size)
        check_metric(metric)
        cfg = dict(editor_config) if editor_config is not None else None
        claimed = False
        self.check_editor(editor, cfg, metric)  # early, before any file is written; the insert's txn decides
        with self._file_lock():
            afile, asha = self._write_adapter(uid, tensors, editor, layer, hook) if tensors else (None, None)
            try:
                with self._write_txn():
                    # the editor spec is fixed (first writer) or checked (every later one) in the insert's
                    # transaction
                    claimed = spec.claim_editor(self._conn, self.path, editor, cfg, metric)
                    cur = self._conn.execute(
                        "INSERT INTO edits(uid, prompt, target, extra, editor, editor_config, layer, key, key_dim, "
                        "adapter_file, adapter_sha256, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?, 'active', ?)",
                        (uid, prompt, target, json.dumps(extra or {}, sort_keys=True), editor,
                         json.dumps(cfg or {}, sort_keys=True), layer, key_blob, key_dim, afile, asha,
                         time.time()),
                    )
                    new_id = int(cur.lastrowid)
                    self._conn.execute("DELETE FROM pending WHERE file = ?", (afile,))
                    schema.seal_rows(self._conn, new_id)
                    self._bump_version()
                    hook("inserted")
                    if claimed:
                        self._routes.follow_metric(self.metric)
                    if key_blob is not None:
                        self._routes.update(added=[(new_id, key_blob)])
                        hook("routed")
            except BaseException:
                self._drop_pending(afile)  # we hold the lock: the file is ours, and no row names it
                raise
            hook("committed")
        return self.get(new_id)

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

    def _write_adapter(self, uid: str, tensors: dict[str, Any], editor: str, layer: str,
                       hook: Callable[[str], None]) -> tuple[str, str]:
        """Under the lock: name the file in the ``pending`` manifest (committed), then write it atomically; returns
        its name and SHA-256. A crash from here to the row's commit leaves a file the store knows is its own."""
        from safetensors.torch import save

        afile = f"{uid}.safetensors"
        with self._write_txn():
            self._conn.execute("INSERT INTO pending(file, created_at) VALUES (?, ?)", (afile, time.time()))
        try:
            state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            data = save(state, metadata={"edit_uid": uid, "editor": editor, "layer": layer})
            atomic_write_with(self.path / ADAPTER_DIR / afile, lambda tmp: tmp.write_bytes(data), hook=hook)
        except BaseException:
            self._drop_pending(afile)
            raise
        return afile, hashlib.sha256(data).hexdigest()

    def _drop_pending(self, afile: str | None) -> None:
        """Under the lock: remove a pending adapter file that no row names, its temporary file, and its entry."""
        if afile and _ADAPTER_NAME.fullmatch(afile):
            self._remove_files(afile)
            with contextlib.suppress(sqlite3.Error), self._write_txn():
                self._conn.execute("DELETE FROM pending WHERE file = ?", (afile,))

    def _remove_files(self, afile: str) -> list[str]:
        """Remove an adapter file of this store and its temporary files (``.NAME.*.tmp``); what was removed."""
        adir, removed = self.path / ADAPTER_DIR, []
        for p in [adir / afile, *adir.glob(f".{afile}.*.tmp")]:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
        return removed

    @mapped
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
            schema.seal_rows(self._conn, first)
            self._routes.update(added=list(zip(ids, blobs)))
            self._bump_version()
        return ids

    @mapped
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
            raise UnknownEditError(f"no edit with id {', '.join(map(str, out_of_range))} in store {self.path} "
                             f"(edit ids are whole numbers from 1 to {MAX_ID})")
        hook = _crash_hook or (lambda stage: None)
        with self._write_txn():
            rows = self._conn.execute(f"SELECT {self._columns} FROM edits WHERE id IN ({','.join('?' * len(ids))})",
                                      ids).fetchall() if ids else []
            known = {rec.id: rec for rec in map(self._row_to_record, rows)}  # a damaged row is refused, not used
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise UnknownEditError(f"no edit with id {', '.join(map(str, unknown))} in store {self.path}")
            out, removed, now = [], [], time.time()
            for i in ids:
                changed = known[i].status == "active"
                if changed:
                    self._conn.execute("UPDATE edits SET status = 'rolled_back', rolled_back_at = ? WHERE id = ?",
                                       (now, i))
                    known[i].status = "rolled_back"
                    if known[i].key is not None:
                        removed.append((i, known[i].key.tobytes()))
                out.append((i, changed))
            if any(c for _, c in out):
                self._bump_version()
            if removed:
                self._routes.update(removed=removed)
                hook("routed")
        hook("committed")
        return out

    @mapped
    def reconcile(self) -> list[str]:
        """Remove the leftovers of this store's own interrupted writes (a crash); returns what was removed.

        Only files the store wrote itself go: an adapter file named in the ``pending`` manifest whose row was never
        committed, with its temporary files, and the router's temporary files. A file someone else put into the
        store's folders is never touched. Writers hold the same file lock while they write, so nothing in progress
        is removed."""
        removed: list[str] = []
        if self.readonly:
            return removed
        with self._file_lock():
            pending = [r[0] for r in self._conn.execute("SELECT file FROM pending")]
            if not pending and not any(self.path.glob(".router*.tmp")):
                return removed
            named = {r[0] for r in self._conn.execute(
                f"SELECT adapter_file FROM edits WHERE adapter_file IN ({','.join('?' * len(pending))})", pending)}
            for afile in pending:
                if afile not in named and _ADAPTER_NAME.fullmatch(afile):  # a damaged name never leaves the folder
                    removed += self._remove_files(afile)
            with self._write_txn():
                self._conn.executemany("DELETE FROM pending WHERE file = ?", ((f,) for f in pending))
            for p in [*self.path.glob(f".{ROUTER_PREFIX}*.faiss.*.tmp"), *self.path.glob(f".{ROUTER_META}.*.tmp")]:
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
        return removed

    # ------------------------------------------------------------------ router (editing/store_router.py)
    @mapped
    def keys_checksum(self) -> str:
        """Checksum of the active edits' ids and keys (one meta value; moves with every add and rollback)."""
        return self._routes.checksum()

    @mapped
    def refresh_router(self, metric: str | None = None) -> Router:
        """Bring the router of record in step with the rows and return it (always the same object for this store;
        editors hold it). Call it whenever the rows may have moved: after a write, and when ``version`` shows
        another writer's. ``metric``: the editor's, while the store has none recorded (before ``set_editor``)."""
        check_metric(metric)
        self._metric_hint = metric or self._metric_hint
        return self._routes.current(self.metric)

    def router(self, metric: str | None = None) -> Router:
        """The router of record, in step with the rows: ``refresh_router`` under the name readers use."""
        return self.refresh_router(metric)

    def save_router(self) -> None:
        """Write the in-memory router beside the store (a no-op read-only: the index is rebuilt next time)."""
        self._routes.save()

    @mapped
    def search(self, keys: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest active edits to ``keys`` (n, d): ``(scores, ids)``; ids are -1 where there is none.

        Scores are cosine similarities for the ``ip`` metric and squared L2 distances for ``l2``."""
        return self.refresh_router().search(np.asarray(keys, dtype=np.float32).reshape(len(keys), -1), k)
