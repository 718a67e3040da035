"""The EditStore (DESIGN §5): a durable, revocable registry of model edits in one directory.

Layout of a store directory::

    edits.sqlite          the single source of truth: one row per edit, the store's meta data (WAL mode)
    adapters/<uid>.safetensors   one file per edit (its LoRA / codebook value / weight delta)
    router.faiss, router.json    the faiss router over the active edits' keys, with the checksum of the rows
                                 it was built from; rebuilt on open whenever that checksum does not match
    .lock                        advisory lock that serialises the "write file, commit row" step

Applying an edit is atomic: its tensors are written to a temporary file, fsynced and renamed to their final
name, and only then is the row committed. A crash before the commit leaves at most a file that no row names;
opening the store removes such orphans (under the lock, so a concurrent writer's file in flight is never
taken). Rollback marks the row ``rolled_back`` and drops its key from the router; rolling back twice is a no-op.
Concurrent writers are serialised by SQLite's busy timeout and the lock; no edit is lost.

The store also records the identity of the base model (name and weight hash, see ``adapters/llm.py``) and
refuses to be used with another model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lifelong.platform.errors import UserError

DB_NAME = "edits.sqlite"
ADAPTER_DIR = "adapters"
ROUTER_INDEX = "router.faiss"
ROUTER_META = "router.json"
LOCK_NAME = ".lock"
SCHEMA_VERSION = 1
_METRICS = ("ip", "l2")

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
    rolled_back_at REAL
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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _normalise(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.float32)
    norms = np.linalg.norm(keys, axis=1, keepdims=True)
    return keys / np.maximum(norms, 1e-12)


def text_features(texts: Sequence[str], dim: int = 2048) -> np.ndarray:
    """Hashed character-trigram vectors (L2-normalised): a model-free similarity for ``nearest``.

    Good enough to find which stored fact a sentence is about; callers with a sentence encoder pass ``embed``.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        t = "  " + re.sub(r"\s+", " ", text.lower().strip()) + "  "
        for i in range(len(t) - 2):
            h = int.from_bytes(hashlib.blake2b(t[i : i + 3].encode(), digest_size=4).digest(), "little")
            out[row, h % dim] += 1.0
    return _normalise(out) if len(texts) else out


class EditStore:
    """A directory of edits; see the module docstring. Use ``EditStore.open(path)`` or ``with EditStore(path)``."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model_identity: dict[str, str] | None = None,
        create: bool = True,
        metric: str = "ip",
        busy_timeout_s: float = 60.0,
    ) -> None:
        self.path = Path(path)
        if metric not in _METRICS:
            raise StoreError(f"router metric {metric!r} is not allowed; allowed values: {', '.join(_METRICS)}")
        if not self.path.exists():
            if not create:
                raise StoreError(f"edit store {self.path} does not exist")
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise StoreError(f"edit store path {self.path} is not a directory")
        elif not create and not (self.path / DB_NAME).exists():
            raise StoreError(f"{self.path} is not an edit store (no {DB_NAME})")
        (self.path / ADAPTER_DIR).mkdir(exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._conn = sqlite3.connect(
            self.path / DB_NAME, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._retry(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._write_txn():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)
            if self._meta("schema_version") is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("metric", metric)
                self._set_meta("created_at", repr(time.time()))
        self.metric = self._meta("metric") or metric
        if model_identity is not None:
            self.check_model(model_identity)
        self.reconcile()
        self._index: Any = None
        self._index_checksum: str | None = None

    # ------------------------------------------------------------------ opening and closing
    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> "EditStore":
        """Open (and by default create) the store at ``path``."""
        return cls(path, **kwargs)

    def close(self) -> None:
        if self._conn is not None:
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
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def meta(self) -> dict[str, str]:
        """All meta data of the store (schema version, metric, model identity, editor)."""
        return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    # ------------------------------------------------------------------ model identity and editor
    def set_model_name(self, name: str) -> None:
        """Record the model the store's edits are made for (the first session to open the store does this)."""
        with self._write_txn():
            if self._meta("model_name") is None:
                self._set_meta("model_name", name)

    def model_identity(self) -> dict[str, str] | None:
        raw = self._meta("model_identity")
        return json.loads(raw) if raw else None

    def check_model(self, identity: dict[str, str]) -> None:
        """Record the base model's identity on first use; refuse a different model afterwards."""
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

    def editor_spec(self) -> tuple[str, dict[str, Any]] | None:
        """The ``(editor name, config)`` the store's edits were made with, or None for a new store."""
        raw = self._meta("editor")
        if raw is None:
            return None
        d = json.loads(raw)
        return d["name"], d.get("config", {})

    def set_editor(self, name: str, config: dict[str, Any]) -> None:
        """Fix the editor of the store (first apply); a different editor or config later is refused."""
        with self._write_txn():
            raw = self._meta("editor")
            if raw is None:
                self._set_meta("editor", json.dumps({"name": name, "config": config}, sort_keys=True))
                return
        have = json.loads(raw)
        if have["name"] != name:
            raise StoreError(
                f"edit store {self.path} holds {have['name']!r} edits; it cannot take {name!r} edits "
                f"(use --editor {have['name']} or a new store)"
            )

    # ------------------------------------------------------------------ reading rows
    def _row_to_record(self, row: sqlite3.Row | tuple) -> EditRecord:
        (id_, uid, prompt, target, extra, editor, econf, layer, key, key_dim, afile, asha, status, cat, rat) = row
        vec = np.frombuffer(key, dtype=np.float32).copy() if key is not None else None
        return EditRecord(
            id=int(id_), uid=uid, prompt=prompt, target=target, status=status, editor=editor, layer=layer,
            editor_config=json.loads(econf), extra=json.loads(extra), key=vec, adapter_file=afile,
            adapter_sha256=asha, created_at=float(cat), rolled_back_at=rat,
        )

    _COLUMNS = (
        "id, uid, prompt, target, extra, editor, editor_config, layer, key, key_dim, adapter_file, "
        "adapter_sha256, status, created_at, rolled_back_at"
    )

    def all_edits(self) -> list[EditRecord]:
        """Every edit ever applied, in order, rolled back or not."""
        rows = self._conn.execute(f"SELECT {self._COLUMNS} FROM edits ORDER BY id").fetchall()
        return [self._row_to_record(r) for r in rows]

    def active_edits(self) -> list[EditRecord]:
        """The edits currently in force, in the order they were applied."""
        rows = self._conn.execute(
            f"SELECT {self._COLUMNS} FROM edits WHERE status = 'active' ORDER BY id"
        ).fetchall()
        return [self._row_to_record(r) for r in rows]

    def get(self, edit_id: int) -> EditRecord:
        row = self._conn.execute(f"SELECT {self._COLUMNS} FROM edits WHERE id = ?", (int(edit_id),)).fetchone()
        if row is None:
            raise StoreError(f"no edit with id {edit_id} in store {self.path}")
        return self._row_to_record(row)

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM edits WHERE status = 'active'").fetchone()[0])

    # ------------------------------------------------------------------ adapters
    def load_tensors(self, record: EditRecord) -> dict[str, Any]:
        """The edit's tensors, after checking the file against its recorded SHA-256."""
        from safetensors.torch import load_file

        if not record.adapter_file:
            return {}
        path = self.path / ADAPTER_DIR / record.adapter_file
        if not path.is_file():
            raise CorruptEditError(record.id, f"edit {record.id}: adapter file {path} is missing")
        sha = _file_sha256(path)
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

    def verify(self) -> list[tuple[int, str]]:
        """``(id, problem)`` for every active edit whose adapter file is missing or corrupted."""
        bad = []
        for rec in self.active_edits():
            try:
                if rec.adapter_file:
                    path = self.path / ADAPTER_DIR / rec.adapter_file
                    if not path.is_file():
                        raise CorruptEditError(rec.id, f"edit {rec.id}: adapter file {path} is missing")
                    if _file_sha256(path) != rec.adapter_sha256:
                        raise CorruptEditError(rec.id, f"edit {rec.id}: adapter file {path} is corrupted")
            except CorruptEditError as exc:
                bad.append((rec.id, str(exc)))
        return bad

    # ------------------------------------------------------------------ writing
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
        _crash_hook: Callable[[str], None] | None = None,
    ) -> EditRecord:
        """Write one edit atomically: tensors to a temp file, fsync, rename, then commit the row.

        ``_crash_hook`` is called with a stage name between the steps; the crash tests use it to die there.
        """
        from safetensors.torch import save_file

        uid = uuid.uuid4().hex
        hook = _crash_hook or (lambda stage: None)
        key_blob = None
        key_dim = 0
        if key is not None:
            k = np.asarray(key, dtype=np.float32).reshape(-1)
            key_blob, key_dim = k.tobytes(), int(k.size)
        adir = self.path / ADAPTER_DIR
        with self._file_lock():
            afile = asha = None
            if tensors:
                afile = f"{uid}.safetensors"
                fd, tmp = tempfile.mkstemp(dir=adir, prefix=f".{uid}-", suffix=".tmp")
                os.close(fd)
                try:
                    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                              metadata={"edit_uid": uid, "editor": editor, "layer": layer})
                    hook("written")
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                    asha = _file_sha256(Path(tmp))
                    hook("fsynced")
                    os.replace(tmp, adir / afile)
                    _fsync_dir(adir)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                hook("renamed")
            with self._write_txn():
                cur = self._conn.execute(
                    "INSERT INTO edits(uid, prompt, target, extra, editor, editor_config, layer, key, key_dim, "
                    "adapter_file, adapter_sha256, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?, 'active', ?)",
                    (uid, prompt, target, json.dumps(extra or {}, sort_keys=True), editor,
                     json.dumps(editor_config or {}, sort_keys=True), layer, key_blob, key_dim, afile, asha,
                     time.time()),
                )
                new_id = int(cur.lastrowid)
                hook("inserted")
            hook("committed")
        rec = self.get(new_id)
        if self._index is not None and rec.key is not None:
            self._index_add([rec])
        return rec

    def rollback(self, ids: Sequence[int]) -> list[tuple[int, bool]]:
        """Mark edits rolled back and drop their keys; ``(id, changed)`` per id (False: was already rolled back).

        Unknown ids are refused before anything changes.
        """
        ids = [int(i) for i in ids]
        with self._write_txn():
            known = {
                int(r[0]): r[1]
                for r in self._conn.execute(
                    f"SELECT id, status FROM edits WHERE id IN ({','.join('?' * len(ids))})", ids
                ).fetchall()
            } if ids else {}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise StoreError(f"no edit with id {', '.join(map(str, unknown))} in store {self.path}")
            out = []
            now = time.time()
            for i in ids:
                changed = known[i] == "active"
                if changed:
                    self._conn.execute(
                        "UPDATE edits SET status = 'rolled_back', rolled_back_at = ? WHERE id = ?", (now, i)
                    )
                    known[i] = "rolled_back"
                out.append((i, changed))
        if self._index is not None:
            gone = [i for i, changed in out if changed]
            if gone:
                self._index.remove_ids(np.asarray(gone, dtype=np.int64))
                self._index_checksum = self._keys_checksum()
        return out

    def reconcile(self) -> list[str]:
        """Remove temp files and adapter files that no row names (left by a crash); returns what was removed."""
        removed = []
        adir = self.path / ADAPTER_DIR
        with self._file_lock():
            named = {r[0] for r in self._conn.execute("SELECT adapter_file FROM edits WHERE adapter_file IS NOT NULL")}
            for p in adir.iterdir():
                if p.name.endswith(".tmp") or (p.suffix == ".safetensors" and p.name not in named):
                    with contextlib.suppress(OSError):
                        p.unlink()
                        removed.append(p.name)
            for p in self.path.glob(".router-*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
        return removed

    # ------------------------------------------------------------------ router
    def _keys_checksum(self) -> str:
        h = hashlib.sha256(self.metric.encode())
        for id_, key in self._conn.execute(
            "SELECT id, key FROM edits WHERE status = 'active' AND key IS NOT NULL ORDER BY id"
        ):
            h.update(int(id_).to_bytes(8, "little"))
            h.update(hashlib.sha256(key).digest())
        return h.hexdigest()

    def _prepare(self, keys: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(np.asarray(keys, dtype=np.float32).reshape(len(keys), -1))
        return _normalise(keys) if self.metric == "ip" else keys

    def _new_index(self, dim: int) -> Any:
        import faiss

        flat = faiss.IndexFlatIP(dim) if self.metric == "ip" else faiss.IndexFlatL2(dim)
        return faiss.IndexIDMap2(flat)

    def _index_add(self, records: Sequence[EditRecord]) -> None:
        keyed = [r for r in records if r.key is not None]
        if not keyed:
            return
        if self._index is None:
            self._index = self._new_index(keyed[0].key.size)
        if keyed[0].key.size != self._index.d:
            raise StoreError(
                f"edit {keyed[0].id} has a key of size {keyed[0].key.size}; the router holds keys of size "
                f"{self._index.d}"
            )
        self._index.add_with_ids(self._prepare(np.stack([r.key for r in keyed])),
                                 np.asarray([r.id for r in keyed], dtype=np.int64))
        self._index_checksum = self._keys_checksum()

    def router(self) -> Any:
        """The faiss ``IndexIDMap2`` over the active keys (loaded if its checksum matches, else rebuilt)."""
        import faiss

        checksum = self._keys_checksum()
        if self._index is not None and self._index_checksum == checksum:
            return self._index
        meta_path, index_path = self.path / ROUTER_META, self.path / ROUTER_INDEX
        index = None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("checksum") == checksum and index_path.is_file():
                index = faiss.read_index(str(index_path))
        except (OSError, ValueError, RuntimeError):
            index = None
        if index is None:
            recs = [r for r in self.active_edits() if r.key is not None]
            self._index = None
            if recs:
                self._index_add(recs)
                index = self._index
            self._save_router(index, checksum)
        self._index, self._index_checksum = index, checksum
        return index

    def _save_router(self, index: Any, checksum: str) -> None:
        import faiss

        try:
            if index is not None:
                fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".router-", suffix=".tmp")
                os.close(fd)
                faiss.write_index(index, tmp)
                os.replace(tmp, self.path / ROUTER_INDEX)
            else:
                with contextlib.suppress(OSError):
                    (self.path / ROUTER_INDEX).unlink()
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".router-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"checksum": checksum, "metric": self.metric}, f)
            os.replace(tmp, self.path / ROUTER_META)
        except OSError:
            pass  # a read-only store still routes; the index is simply rebuilt next time

    def search(self, keys: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest active edits to ``keys`` (n, d): ``(scores, ids)``; ids are -1 where there is none.

        Scores are cosine similarities for the ``ip`` metric and squared L2 distances for ``l2``.
        """
        keys = np.asarray(keys, dtype=np.float32).reshape(len(keys), -1)
        index = self.router()
        if index is None or index.ntotal == 0:
            return (np.full((len(keys), k), -np.inf if self.metric == "ip" else np.inf, dtype=np.float32),
                    np.full((len(keys), k), -1, dtype=np.int64))
        return index.search(self._prepare(keys), k)

    def nearest(
        self,
        prompt: str,
        *,
        k: int = 1,
        embed: Callable[[list[str]], np.ndarray] | None = None,
    ) -> list[tuple[EditRecord, float]]:
        """The ``k`` active edits whose prompts are most similar to ``prompt``, with cosine similarity.

        Works without the language model: ``embed`` (texts -> vectors) defaults to hashed character trigrams;
        pass a sentence encoder for semantic matching. Used to fact-check a response against the store.
        """
        recs = self.active_edits()
        if not recs:
            return []
        fn = embed or text_features
        mat = _normalise(np.asarray(fn([r.prompt for r in recs]), dtype=np.float32))
        q = _normalise(np.asarray(fn([prompt]), dtype=np.float32))[0]
        sims = mat @ q
        order = np.argsort(-sims, kind="stable")[:k]
        return [(recs[i], float(sims[i])) for i in order]
