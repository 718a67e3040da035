"""One reader for the JSON Lines (or JSON array) files the tool takes: edit files, preference pairs, reward data.

Each problem is one ``UserError`` naming the file and line: missing, not UTF-8, larger than ``MAX_FILE_BYTES``, a
line over ``MAX_LINE_BYTES`` (a 50 MB line used to hold a reader for minutes), invalid JSON, JSON nested deeper
than the parser goes (Python's ``json`` raises ``RecursionError`` there), a record that is not an object, or no
record at all. The readers of each format then check the fields of each record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lifelong.platform.errors import UserError

#: the largest file read whole (the bundled sets are a few hundred KB)
MAX_FILE_BYTES = 256 << 20
#: the longest line (one record): far above any prompt, response or edit, far below what stalls the parser
MAX_LINE_BYTES = 1 << 20


def read_records(path: str | os.PathLike, what: str, *, arrays: bool = True) -> list[tuple[str, int, dict[str, Any]]]:
    """``(where, line, record)`` for each record of a JSON Lines file (or, with ``arrays``, of a file holding one
    JSON array); ``what`` names the kind of file in errors ("edit", "preference")."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise UserError(f"{p}: {what} file not found (it does not exist)")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{p}: {size} bytes; {what} files of at most {MAX_FILE_BYTES} bytes are read")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text (byte {exc.start + 1} cannot be decoded)") from None
    if arrays and text.lstrip().startswith("["):
        values = _parse(text, f"{p}", 1)
        if not isinstance(values, list):
            raise UserError(f"{p}: a JSON array of records was expected")
        items = [(f"{p} record {i + 1}", i + 1, rec) for i, rec in enumerate(values)]
    else:
        items = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                raise UserError(f"{p}:{n}: a line of {len(line)} characters; lines of at most {MAX_LINE_BYTES} are read")
            items.append((f"{p}:{n}", n, _parse(line, f"{p}:{n}", n)))
    if not items:
        raise UserError(f"{what} file {p} holds no {what}s")
    for where, _, rec in items:
        if not isinstance(rec, dict):
            raise UserError(f"{where}: each {what} must be a JSON object, got {type(rec).__name__}")
    return items


def _parse(text: str, where: str, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f" (line {exc.lineno}, column {exc.colno})" if exc.lineno != 1 or line == 1 else f" (column {exc.colno})"
        raise UserError(f"{where}: invalid JSON: {exc.msg}{at}") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read") from None
