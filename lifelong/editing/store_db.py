"""The edit store's SQLite connection: opening (writable or read-only), transactions, the file lock, and the one-line
errors a failing database or file system turns into.

This module changes when the way the store talks to SQLite or to the file system changes; ``editing/store.py``
holds what the rows mean. A writable connection runs in WAL mode with ``synchronous=FULL`` and a busy timeout;
``write_txn`` takes SQLite's write lock at once (``BEGIN IMMEDIATE``, retried while another writer holds it), so of
two writers one waits for the other. ``read_snapshot`` gives a reader one consistent view of several queries (WAL).
A read-only connection is ``mode=ro``, or ``immutable=1`` where the folder cannot be written (a read-only file
system, where SQLite cannot make its ``-shm`` file): no writer can be at work on such a folder. ``file_lock`` is
the store's ``.lock`` (an ``fcntl.flock``, released by the kernel when its holder dies), which serialises the
"write the adapter file, commit its row" step and the removal of leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

from lifelong.editing.store_schema import StoreError, StoreFullError

LOCK_NAME = ".lock"


def retry(fn: Callable[[], Any], timeout_s: float) -> Any:
    """``fn()``, retried for up to ``timeout_s`` while SQLite says the database is locked or busy."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def connect_writable(db: Path, timeout_s: float) -> sqlite3.Connection:
    """A connection that may write (autocommit; transactions are ``write_txn``), with the busy timeout set."""
    conn = sqlite3.connect(db, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return conn


def use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """WAL journal (readers never block the writer) and a full fsync at each commit."""
    retry(lambda: conn.execute("PRAGMA journal_mode=WAL"), timeout_s)
    conn.execute("PRAGMA synchronous=FULL")


def connect_readonly(folder: Path, db: Path, timeout_s: float) -> sqlite3.Connection:
    """``mode=ro``; where SQLite cannot open that (a WAL database in a folder it cannot write its ``-shm``
    into, e.g. a read-only file system), ``immutable=1``: no writer can be at work on such a folder."""
    base = "file:" + urllib.parse.quote(str(db.resolve()))
    try:
        conn = sqlite3.connect(base + "?mode=ro", uri=True, timeout=timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        if os.access(folder, os.W_OK):
            raise
    return sqlite3.connect(base + "?immutable=1", uri=True, isolation_level=None, check_same_thread=False)


@contextlib.contextmanager
def write_txn(conn: sqlite3.Connection, timeout_s: float) -> Iterator[None]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    retry(lambda: conn.execute("BEGIN IMMEDIATE"), timeout_s)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:  # a commit that failed (a full disk) may leave the transaction open: end it unapplied
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read snapshot (WAL) around several queries, so they see the same committed state."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


@contextlib.contextmanager
def file_lock(folder: Path) -> Iterator[None]:
    """Process-wide exclusive lock on ``folder/.lock`` (released by the kernel if the process dies)."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _cannot_write(folder: Path, why: str) -> StoreError:
    return StoreError(f"edit store {folder} cannot be written ({why}); `lifelong edit list` and `edit generate` "
                      "still read it, `edit apply` and `edit rollback` need write access")


def _disk_full(folder: Path, why: str) -> StoreFullError:
    return StoreFullError(f"edit store {folder}: the disk is full ({why}); the write was not made and the store is "
                          "unchanged; free some space and try again")


def sqlite_error(folder: Path, db: Path, exc: sqlite3.Error | UnicodeDecodeError, readonly: bool) -> StoreError:
    """The one-line StoreError for an SQLite error: a store that cannot be written, a busy one, or a damaged file
    (a damaged file can also hold text that is not UTF-8)."""
    text = str(exc)
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return _disk_full(folder, text)
    if "readonly" in text or "read-only" in text or not os.access(folder, os.W_OK) and not readonly:
        return _cannot_write(folder, text)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StoreError(f"edit store {db} is busy ({text}); another process holds it, try again")
    return StoreError(f"edit store database {db} is corrupted or unreadable ({text}); restore it from a backup")


def os_error(folder: Path, exc: OSError) -> StoreError:
    """The one-line StoreError for a file-system error: read-only media, a full disk, or what the OS said."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _disk_full(folder, exc.strerror)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return _cannot_write(folder, f"{exc.strerror}: {exc.filename}")
    return StoreError(f"edit store {folder}: {exc.strerror or exc} ({exc.filename})")


def mapped(method: Callable) -> Callable:
    """Turn an SQLite or decoding error inside a public store method into the store's one-line StoreError
    (``self._error``; a damaged file can hold text that is not UTF-8), and a full disk into ``StoreFullError``."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise self._error(exc) from None
        except OSError as exc:  # a full disk under a write: one line (other OS errors keep their own handling)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise os_error(self.path, exc) from None
            raise

    return wrapper


def check_store_path(folder: Path, db: Path, *, create: bool, readonly: bool) -> None:
    """Refuse, before anything is opened, a path that is not a store where one must exist, and a non-empty folder
    that is not a store where one would be made (it would take the files in it for its own leftovers)."""
    if not folder.exists():
        if not create or readonly:
            raise StoreError(f"edit store {folder} does not exist")
    elif not folder.is_dir():
        raise StoreError(f"edit store path {folder} is not a directory")
    elif not db.exists():
        if not create or readonly:
            raise StoreError(f"{folder} is not an edit store (no {db.name})")
        entries = sorted(os.listdir(folder))
        if entries and not db.exists():  # looked at again: a racing opener of a new store makes its database first
            raise StoreError(f"{folder} is not an edit store (no {db.name}) and is not empty ({len(entries)} "
                             f"entries, e.g. {entries[0]!r}); a new store needs a new or empty folder")
