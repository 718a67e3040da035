"""The one atomic write: temporary file in the target's folder, fsync, rename over the target, fsync the folder.

Every file the platform or a plugin writes for keeps (checkpoints, results, stored edits, reward models, weights,
caches) goes through here, so a crash at any point leaves the previous file or the new one, never half of one,
and a rename that has returned survives a power cut.

``atomic_folder`` does the same for a whole folder (a saved model, an adapter, a cache entry): the caller fills
a temporary sibling, which is fsynced as a tree and then put in place in one step, over an existing folder by
swapping the two; what a killed writer leaves beside it is settled on the next open (``recover_folder``).

``folder_lock`` gives a folder one writer at a time (``fcntl.flock`` on ``FOLDER/.lock``, with the holder's pid
written in it for the message a second writer gets). The kernel drops a flock when its process dies, however it
dies, so the lock of a killed writer is simply free: the next writer takes it and writes its own pid. The lock
file itself is left in place (removing it would let two writers lock two different files). Holding the lock, the
writer removes the temporary files (``.NAME.*.tmp``) a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import uuid
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


# ------------------------------------------------------------------------------------------- whole folders
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where it is not available
    (another OS, an old kernel or C library, a file system without it)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def aside_path(out: str | os.PathLike) -> Path:
    """Where ``atomic_folder`` keeps the old folder between its two renames, when it cannot swap in one step."""
    out = Path(out)
    return out.parent / f".{out.name}.old"


def _temporaries(out: Path) -> Iterator[tuple[Path, int]]:
    """The temporary siblings ``.NAME.PID.XXXXXXXX.tmp`` of ``out`` and the pid of the process that made each."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in out.parent.iterdir():
            m = pattern.fullmatch(entry.name)
            if m is not None and entry.is_dir() and not entry.is_symlink():
                yield entry, int(m.group(1))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _settle_aside(out: Path) -> None:
    """An aside with ``out`` missing is the old folder whole (killed between the two renames): put it back. An
    aside beside ``out`` is an old folder the new one had already replaced: remove it."""
    aside = aside_path(out)
    if not aside.is_dir():
        return
    if not out.exists():
        os.replace(aside, out)
        fsync_dir(out.parent)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def recover_folder(out: str | os.PathLike) -> None:
    """Settle what a killed ``atomic_folder`` left beside ``out``: the aside folder is put back (``out`` missing)
    or removed (``out`` there), and temporary siblings of processes that no longer run are removed. Readers call
    it before they read a folder, writers on entry; a folder that cannot be changed (read-only) is left as it is."""
    out = Path(out)
    with contextlib.suppress(OSError):
        _settle_aside(out)
    for tmp, pid in list(_temporaries(out)):
        if not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _put_in_place(tmp: Path, out: Path, replace: bool, what: str, hook: Callable[[str], None] | None) -> None:
    """Make the complete folder ``tmp`` the folder ``out``; see ``atomic_folder``."""
    if not replace or not out.exists():
        try:
            os.rename(tmp, out)  # onto nothing, or onto an empty folder
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and not replace:
                raise UserError(f"{what} {out} was filled by another writer meanwhile; name a new folder") from None
            raise
        fsync_dir(out.parent)
    elif _exchange(tmp, out):
        fsync_dir(out.parent)  # the new folder is ``out`` now, the old one is at ``tmp``: removed below
        if hook is not None:
            hook("renamed")
        shutil.rmtree(tmp, ignore_errors=True)
        return
    else:
        aside = aside_path(out)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(out, aside)
        fsync_dir(out.parent)
        if hook is not None:
            hook("aside")
        os.replace(tmp, out)  # a kill before this line: ``out`` is missing and the old folder whole at ``aside``
        fsync_dir(out.parent)
        if hook is not None:
            hook("renamed")
        shutil.rmtree(aside, ignore_errors=True)
        return
    if hook is not None:
        hook("renamed")


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, *, replace: bool = True, what: str = "folder",
                  hook: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out`` to fill; when the block ends, it becomes ``out`` in one step.

    The temporary folder (``.NAME.PID.XXXXXXXX.tmp``) is fsynced file by file, then renamed to ``out``. Over an
    existing folder (``replace=True``) the two are swapped by ``renameat2(RENAME_EXCHANGE)`` and the old one
    removed; where the swap is not available (another OS or file system), the old folder is set aside
    (``.NAME.old``) and the new one renamed in. The parent folder is fsynced after each rename, so a returned call
    survives a power cut. With ``replace=False`` an existing non-empty ``out`` is refused (``UserError``) before
    the block runs, and an empty one is replaced.

    Any exception, in the block or in the swap, removes the temporary folder and leaves the old ``out`` as it was
    (put back from the aside if it had been set aside). A killed process leaves at most an aside or its own
    temporary folder; the next ``atomic_folder`` or ``recover_folder`` on ``out`` restores or removes them, so a
    reader sees the old folder or the new one, never a mix. ``hook`` is called with each stage reached
    (``written``, ``fsynced``, ``aside``, ``renamed``): crash tests die there. I/O errors are ``OSError``.
    """
    out = Path(out)
    recover_folder(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} exists and is not a folder; choose another path")
    if not replace and out.exists() and any(out.iterdir()):
        raise UserError(f"{what} {out} exists and is not empty; name a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        if hook is not None:
            hook("written")
        fsync_tree(tmp)
        if hook is not None:
            hook("fsynced")
        _put_in_place(tmp, out, replace, what, hook)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            _settle_aside(out)
        raise
