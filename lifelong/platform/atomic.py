"""The one atomic write: temporary file in the target's folder, fsync, rename over the target, fsync the folder.

Every file the platform or a plugin writes for keeps (checkpoints, results, stored edits, reward models, weights,
caches) goes through here, so a crash at any point leaves the previous file or the new one, never half of one,
and a rename that has returned survives a power cut.

``folder_lock`` gives a folder one writer at a time (``fcntl.flock`` on ``FOLDER/.lock``, with the holder's pid
written in it for the message a second writer gets). The kernel drops a flock when its process dies, however it
dies, so the lock of a killed writer is simply free: the next writer takes it and writes its own pid. The lock
file itself is left in place (removing it would let two writers lock two different files). Holding the lock, the
writer removes the temporary files (``.NAME.*.tmp``) a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from lifelong.platform.errors import UserError, os_error_message

LOCK_NAME = ".lock"

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
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


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's content to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder under ``folder`` (before the folder is renamed into place as a whole)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None],
                      hook: Callable[[str], None] | None = None) -> None:
    """Let ``write(tmp)`` fill a temporary file beside ``path``, then fsync it and rename it over ``path``.

    For libraries that write to a path themselves (``safetensors.save_file``, ``faiss.write_index``). ``hook`` is
    called with the stage reached (``written``, ``fsynced``, ``renamed``); crash tests use it to die there. On any
    error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # the mode an ordinary open() would give, not mkstemp's 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if hook is not None:
            hook("written")
        fsync_file(tmp)
        if hook is not None:
            hook("fsynced")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if hook is not None:
        hook("renamed")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes (``.NAME.XXXX.tmp``) directly in ``folder`` and
    in its ``logs`` tree; call it only while holding the folder's lock. Returns what it removed."""
    folder = Path(folder)
    found = [p for p in folder.glob(".*.tmp") if p.is_file()]
    if (folder / "logs").is_dir():
        found += [p for p in (folder / "logs").rglob(".*.tmp") if p.is_file()]
    removed = []
    for leftover in found:
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed.append(leftover)
    return removed


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s lock (creating the folder) for the ``with`` block, then clean up its leftovers.

    A second writer gets a ``UserError`` naming the holder's pid; the folder cannot be created or locked (a file
    in the way, a read-only file system, no space) is a ``UserError`` too. A folder this call created is removed
    again when the block fails before writing anything into it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder; choose another path")
    created, locked = not folder.exists(), False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as exc:
        raise UserError(os_error_message(exc, f"cannot write to {what}", folder)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{what} {folder} is in use by another lifelong process (pid {holder}, holding "
                            f"{folder / LOCK_NAME}); wait for it to end or choose another path") from None
        locked = True
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            remove_temporaries(folder)
        except OSError as exc:
            raise UserError(os_error_message(exc, f"cannot write to {what}", folder)) from None
        yield folder
    except BaseException:
        if locked and created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:  # only our lock: no trace
            with contextlib.suppress(OSError):
                (folder / LOCK_NAME).unlink()
                folder.rmdir()
        raise
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks: the checksum the stores, reward models and model caches record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
