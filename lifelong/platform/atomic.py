"""The one atomic write: temporary file in the target's folder, fsync, rename over the target, fsync the folder.

Every file the platform or a plugin writes for keeps (checkpoints, results, stored edits, reward models, weights,
caches) goes through here, so a crash at any point leaves the previous file or the new one, never half of one,
and a rename that has returned survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

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
