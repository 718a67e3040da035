"""The one exception type the command line turns into a clear one-line error and exit code 2, and the one place
that turns an operating-system error on a user's path (a full disk, a read-only folder, a file where a folder
should be) into such an error."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator


class UserError(Exception):
    """Bad input from the user (a file, a field, a name): the message names the problem and what is allowed."""


_WHY = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many levels of symbolic links",
}


def path_os_error(exc: OSError) -> str | None:
    """The one-line message for an ``OSError`` about a path that reached the command line unhandled (a name too
    long for the file system, a loop of links, a permission, a full disk): the path (shortened past 200
    characters) and why; None for an error that names no path or whose cause is not one of these."""
    if exc.filename is None or exc.errno not in _WHY:
        return None
    name = os.fsdecode(exc.filename)
    if len(name) > 200:
        name = f"{name[:100]}...({len(name)} characters)"
    return f"cannot use the path {name}: {_WHY[exc.errno]}"


def os_error_message(exc: OSError, action: str, path: str | os.PathLike) -> str:
    """``action PATH: why`` for an ``OSError``: ``errno`` in words, the path the OS named (else ``path``)."""
    why = _WHY.get(exc.errno or 0) or exc.strerror or str(exc)
    named = exc.filename if exc.filename is not None else path
    return f"{action} {os.fsdecode(named)}: {why}"


@contextlib.contextmanager
def user_os_errors(action: str, path: str | os.PathLike) -> Iterator[None]:
    """Inside: an ``OSError`` becomes a ``UserError`` saying what was being done (``action``, e.g. "cannot write
    results to"), where and why. The atomic writers have already removed their temporary file by then, so
    nothing half-written is left."""
    try:
        yield
    except OSError as exc:
        raise UserError(os_error_message(exc, action, path)) from exc


def one_line(message: str) -> str:
    """``message`` as one printable line: control characters (a newline in a path a user typed, an escape
    sequence) are written as Python escapes, so an error is always one line on stderr."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in str(message))
